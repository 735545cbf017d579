import importlib.metadata
import json
import platform
import subprocess
import sys

import pytest
import torch

from middo.errors import MiddoError
from middo.provenance import (
    CPU_FLAGS,
    PACKAGES,
    cpu_features,
    device_name,
    dtype_name,
    env_path,
    environment,
    package_version,
    write_metrics,
)


def test_environment_lists_versions_and_the_given_device_and_dtype():
    env = environment(device="cpu", dtype="float32")
    assert list(env) == ["python", "torch", "transformers", "trl", "dvc", "middo", "device", "dtype", "cpu"]
    assert env["python"] == platform.python_version()
    assert env["torch"] == importlib.metadata.version("torch") == torch.__version__
    assert env["middo"] == importlib.metadata.version("middo")
    assert (env["device"], env["dtype"]) == ("cpu", "float32")
    assert env["cpu"] == cpu_features() and env["cpu"]["arch"] == platform.machine()
    # DVC hashes the metrics files that carry this: two runs of one environment must write the same bytes
    assert json.dumps(environment("cpu", "float32")) == json.dumps(env)


def test_a_missing_package_is_none_not_an_error():
    assert package_version("middo-no-such-distribution") is None


def test_asking_imports_neither_dvc_nor_torch():
    code = (
        "import sys; from middo.provenance import environment; environment('n/a', 'n/a'); "
        "print(sorted(m for m in ('dvc', 'torch', 'transformers', 'trl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_device_and_dtype_names_drop_the_rank_specific_index_and_torch_prefix():
    assert device_name(torch.device("cuda:1")) == device_name("cuda") == "cuda"
    assert device_name(torch.device("cpu")) == "cpu"
    assert dtype_name(torch.bfloat16) == "bfloat16"
    assert set(PACKAGES) <= set(environment("cpu", "bfloat16"))


# the flags line of a 2-core AMD EPYC without AVX-512 and of a Sapphire Rapids core, trimmed
EPYC = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma bmi2\n\nprocessor\t: 1\nflags\t\t: fpu avx avx2 fma\n"
SPR = "flags\t\t: fpu avx avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8\n"


def test_cpu_features_name_the_kernel_relevant_flags_present_and_absent():
    epyc, spr = cpu_features(EPYC), cpu_features(SPR)
    assert list(epyc) == ["arch", *CPU_FLAGS]
    assert epyc == {"arch": platform.machine(), "avx2": True, "avx512f": False, "avx512_bf16": False,
                    "amx_bf16": False, "amx_tile": False}  # fmt: skip
    assert all(spr[flag] for flag in CPU_FLAGS)
    assert cpu_features("") == {"arch": platform.machine(), **dict.fromkeys(CPU_FLAGS, False)}


def test_write_metrics_keeps_the_env_beside_the_numbers(tmp_path):
    path = tmp_path / "round_1" / "train.json"
    env = environment("cpu", "float32")
    write_metrics(path, {"train": {"loss": 1.5, "steps": 8, "tokens_per_second": None}}, env)
    assert env_path(path) == tmp_path / "round_1" / "env" / "train.json"
    assert json.loads(path.read_text()) == {"train": {"loss": 1.5, "steps": 8, "tokens_per_second": None}}
    assert json.loads(env_path(path).read_text()) == env


@pytest.mark.parametrize("bad", [{"merge": "reference"}, {"loss_history": [1.0, 0.9]}, {"ok": True}])
def test_write_metrics_refuses_what_would_be_an_unreadable_column(tmp_path, bad):
    with pytest.raises(MiddoError, match=r"eval.json: metrics must be numbers; not numeric: suite\."):
        write_metrics(tmp_path / "eval.json", {"suite": bad, "average": 0.5}, {})
    assert not list(tmp_path.iterdir())  # nothing written
