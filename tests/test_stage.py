import os
import subprocess
import sys


def test_auto_processes_is_one_per_visible_gpu_and_one_without():
    """``base.processes: auto`` with no GPU in sight (hidden here, so the test holds on a GPU machine too) is one
    process; ``base.device: cpu`` is one process whatever the GPUs; a number stays itself."""
    code = "from middo.stage import process_count as n; print(n('auto'), n('auto', 'cpu'), n(3), n(1, 'cuda'))"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1", "3", "1"]
