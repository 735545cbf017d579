"""Refinement: turn flagged samples into better ones with a teacher LLM (simplify, diversify, improve)."""
