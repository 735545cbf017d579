"""DeepSpeed ZeRO-2 really steps here, on CPU (its CPU accelerator, gloo/shm comm), in a clean subprocess."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
from middo.config import TrainConfig
from middo.records import Record
from middo.train import train_sft
recs = [Record(id=f"r{i}", instruction=f"What is {i} + 1?", output=f"{i + 1}.") for i in range(4)]
cfg = TrainConfig(max_steps=2, batch_size=2, max_length=64, warmup_ratio=0.0, lr_scheduler="constant",
                  learning_rate=1e-4, deepspeed=sys.argv[3])
m = train_sft(recs, sys.argv[1], sys.argv[2], cfg, seed=42, device="cpu", dtype="float32", trust_remote_code=False)
print("METRICS" + json.dumps(m))
"""


@pytest.mark.slow
def test_zero2_steps_on_cpu(base_model_dir, tmp_path):
    pytest.importorskip("deepspeed", reason="install with: pip install --no-build-isolation deepspeed (make setup)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        DS_ACCELERATOR="cpu",
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(base_model_dir),
            str(tmp_path / "m"),
            str(ROOT / "configs/deepspeed/zero2.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads(out.stdout.split("METRICS", 1)[1].splitlines()[0])
    assert metrics["steps"] == 2
    assert all(loss > 0 for loss in metrics["loss_history"])
    assert (tmp_path / "m" / "model.safetensors").is_file()
