"""A random 2-layer model with the default model's tokenizer, for tests where what a model says does not matter.

Windowing and sharding tests compare one run against another bit for bit; the real 135M model would make them slow
without making them stronger. Seeded, so the same weights on every machine.
"""

from __future__ import annotations

from pathlib import Path


def tiny_model(src: Path, dst: Path) -> Path:
    """A 2-layer, 64-wide random copy of ``src``'s architecture at ``dst`` (built once, reused after)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (dst / "config.json").is_file():
        return dst
    cfg = AutoConfig.from_pretrained(src, local_files_only=True)
    cfg.update(
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
        }
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(dst)
    AutoTokenizer.from_pretrained(src, local_files_only=True).save_pretrained(dst)
    return dst
