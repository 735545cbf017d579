import importlib.metadata
import json
import platform
import subprocess
import sys

import torch

from middo.provenance import PACKAGES, device_name, dtype_name, environment, package_version


def test_environment_lists_versions_and_the_given_device_and_dtype():
    env = environment(device="cpu", dtype="float32")
    assert list(env) == ["python", "torch", "transformers", "trl", "dvc", "middo", "device", "dtype"]
    assert env["python"] == platform.python_version()
    assert env["torch"] == importlib.metadata.version("torch") == torch.__version__
    assert env["middo"] == importlib.metadata.version("middo")
    assert (env["device"], env["dtype"]) == ("cpu", "float32")
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
