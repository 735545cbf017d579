"""The backend table: clear errors for unknown names and missing packages, and no heavy imports up front."""

from __future__ import annotations

import subprocess
import sys

import pytest

from middo.errors import MiddoError
from middo.optional import is_available
from middo.teachers import BACKENDS, Sampling, make_teacher


def test_unknown_backend_lists_known_names():
    with pytest.raises(
        MiddoError, match="unknown teacher backend 'nope'; expected one of: openai, transformers, vllm"
    ):
        make_teacher("nope")


def test_bad_argument_is_a_config_error():
    with pytest.raises(MiddoError, match="teacher backend 'openai': .*'concurrensy'.*accepted: \\(base_url"):
        make_teacher("openai", base_url="http://127.0.0.1:1/v1", model="m", concurrensy=2)


@pytest.mark.skipif(is_available("vllm"), reason="vllm is installed here")
def test_vllm_missing_says_what_to_install():
    with pytest.raises(MiddoError, match="needs the 'vllm' package: pip install vllm"):
        make_teacher("vllm", model_path="models/base")


def test_registry_names_every_backend_and_imports_nothing_heavy():
    assert set(BACKENDS) == {"transformers", "openai", "vllm"}
    code = "import sys, middo.teachers; print(sorted(m for m in ('torch', 'openai', 'vllm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "kwargs, field", [({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1}, "temperature"),
                      ({"top_p": 0}, "top_p")],
)  # fmt: skip
def test_sampling_rejects_out_of_range(kwargs, field):
    with pytest.raises(MiddoError, match=f"Sampling.{field}"):
        Sampling(**kwargs)
