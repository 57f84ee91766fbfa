"""Shared pytest set-up: markers, the repository root and the shared real data."""
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (still part of the default suite unless deselected)")
    config.addinivalue_line("markers", "cuda: needs a CUDA device")
    config.addinivalue_line("markers", "hpu: needs a Gaudi device")
    config.addinivalue_line("markers", "mpi: starts processes with mpirun/torchrun")


def pytest_collection_modifyitems(config, items):
    import torch

    skip_cuda = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; under CI its absence is a failure, not a skip."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_DATA} is missing (CI must run with ../shared beside the checkout)")
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture
def child_env() -> dict:
    """Environment for subprocesses: the repository root importable, progress bars off, and the interpreter
    that runs the tests as the one the repository's shell scripts use (tools/python_env.sh reads PYTHON)."""
    env = dict(os.environ)
    env["PYTHON"] = sys.executable
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["BERT_DISABLE_PROGRESS"] = "1"
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env
