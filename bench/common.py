"""Shared helpers for the benchmark scripts: a compute floor, peak memory, input records, machine facts, reporting.

Every benchmark states its speed against a *floor*: the time the matmuls alone would take at the FLOP/s this machine
reaches on a plain square matmul, measured in the same run and dtype. A fraction of floor near 1 means there is
nothing left to win; a small one says where to look.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from middo.records import Record

SEED_PATH = Path(__file__).resolve().parents[1] / "data" / "seed" / "seed.jsonl"


def sync(device: torch.device | str) -> None:
    """Wait for queued kernels, so that ``perf_counter`` measures work done rather than work launched."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def measure_matmul_flops(device: torch.device | str, dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an ``n×n @ n×n`` matmul at ``dtype`` on ``device``, after one warm-up product.

    Args:
        device: where the matmul runs.
        dtype: the dtype the model runs in, so the floor is at the same precision.
        n: side of the square matrices.
        repeats: timed products; their total time is divided into ``2·n³·repeats`` FLOPs.
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    torch.matmul(a, b)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    sync(device)
    return 2.0 * n**3 * repeats / (time.perf_counter() - start)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


_TOPICS = ["rivers", "prime numbers", "bread", "volcanoes", "sorting", "tides", "bees", "chess", "glass", "comets"]
_VERBS = ["Explain", "Summarise", "Describe", "Give three facts about", "Write a short note on", "Compare kinds of"]


def _synthetic_record(i: int, rng: random.Random) -> Record:
    topic = rng.choice(_TOPICS)
    instruction = f"{rng.choice(_VERBS)} {topic}" + "." * rng.randint(1, 3)
    extra = " ".join(rng.choice(_TOPICS) for _ in range(rng.randint(0, 12)))
    sentence = f"This is a point about {topic} and how it relates to {rng.choice(_TOPICS)}."
    output = " ".join([sentence] * rng.choice([1, 2, 3, 5, 8, 20]))
    return Record(id=f"synthetic-{i:06d}", instruction=instruction, input=extra, output=output)


def bench_records(n: int, seed: int = 0) -> list[Record]:
    """``n`` Alpaca-like records: the demo seed file cycled in file order, else deterministic synthetic ones.

    The seed file keeps its order (the reference paths batch in file order, mixing short and long samples);
    ``seed`` only drives the synthetic fallback. Cycled copies get ids ``<id>~<cycle>`` so ids stay unique.
    """
    if SEED_PATH.is_file():
        rows = [json.loads(line) for line in SEED_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
        if rows:
            out = []
            for i in range(n):
                row, cycle = rows[i % len(rows)], i // len(rows)
                rid = row.get("id", f"seed-{i % len(rows):04d}")
                out.append(
                    Record(
                        id=rid if cycle == 0 else f"{rid}~{cycle}",
                        instruction=row["instruction"],
                        input=row.get("input", ""),
                        output=row["output"],
                    )
                )
            return out
    rng = random.Random(seed)
    return [_synthetic_record(i, rng) for i in range(n)]


def machine_info(device: torch.device | str = "cpu") -> dict:
    """CPU model, core count, torch version and, on CUDA, the GPU name: enough to tell two result files apart."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:,.2f}"
    return str(value)


def report(rows: list[dict], path: str | Path, meta: dict | None = None) -> None:
    """Print ``rows`` as an aligned table and write ``{"meta": ..., "rows": ...}`` to ``path`` (atomically)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_fmt(row.get(col, "")) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[j]) for r in cells]) for j, col in enumerate(columns)]
    print("  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"meta": meta or {}, "rows": rows}, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    print(f"wrote {path}")


# Llama-3-8B's shape (random weights: speed depends on the shape, not the values)
LLAMA_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}


def random_llama(shape: dict, tokenizer_dir: str | Path, device: str, dtype: torch.dtype):
    """A random-weight Llama of ``shape`` built directly on ``device`` in ``dtype``, with a real tokenizer.

    The tokenizer's ids are all below the shape's vocabulary, so real text can be scored; nothing is downloaded.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from middo.modeling import LoadedModel, load_tokenizer

    cfg = LlamaConfig(**shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.eval()
    return LoadedModel(model, load_tokenizer(tokenizer_dir), torch.device(device), dtype, f"random-llama{shape}")
