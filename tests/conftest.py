"""Shared fixtures and the one place where hardware markers turn into skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["server_fixtures"]  # real `transformers serve` + scripted HTTP servers, shared by several folders

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    """The embedded default model converted to a HF folder, once per machine (reused across runs)."""
    from middo.base_model import materialise

    cached = Path(os.environ.get("MIDDO_TEST_MODEL", ROOT / ".cache" / "models" / "smollm2-135m-instruct"))
    if not (cached / "config.json").is_file():
        materialise("embedded:smollm2-135m-instruct", cached, False, "auto", False)
    return cached


@pytest.fixture(scope="session")
def scoring_model(base_model_dir):
    """The default model loaded once for all scoring tests (float32 on CPU)."""
    from middo.modeling import load_model

    return load_model(base_model_dir, "cpu", "float32")


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a small shared CPU, two OpenMP threads stall ~10x whenever another process runs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
