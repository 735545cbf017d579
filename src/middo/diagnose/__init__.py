"""Tri-axial diagnosis: measuring (complexity, diversity, quality) is separate from deciding (thresholds)."""
