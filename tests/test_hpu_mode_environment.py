"""PT_HPU_LAZY_MODE is in the environment before the first Habana import, in every entry point that can run on
HPU (issue 22, finding 2).

The Habana bridge reads the variable once, when it is first imported, and that can be as early as
``import torch``: torch loads the device extensions registered under the ``torch.backends`` entry point
group (TORCH_DEVICE_BACKEND_AUTOLOAD). The stand-in below, defined by this test, is such an extension: a
``habana_frameworks`` package registered under that group which, at import, writes the variable it sees
to a file and ends the process. Each entry point runs in a fresh interpreter with the stand-in on its
path; the file says what the bridge would have seen. Benchmarks are not listed: none offers HPU.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

STAND_IN_INIT = '''"""Stand-in for the Habana bridge, written by tests/test_hpu_mode_environment.py."""
import os

with open(os.environ["HABANA_STAND_IN_RECORD"], "w") as record:
    record.write(os.environ.get("PT_HPU_LAZY_MODE", "<unset>"))
os._exit(0)  # what the bridge saw is all this test needs


def autoload():
    pass
'''


@pytest.fixture(scope="module")
def stand_in_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("habana_stand_in")
    (site / "habana_frameworks").mkdir()
    (site / "habana_frameworks" / "__init__.py").write_text(STAND_IN_INIT)
    info = site / "habana_stand_in-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: habana-stand-in\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[torch.backends]\nhpu = habana_frameworks:autoload\n")
    return site


def seen_by_the_bridge(argv, site: Path, tmp_path: Path, inherited=None) -> str:
    record = tmp_path / "record.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("PT_HPU_LAZY_MODE", "TORCH_DEVICE_BACKEND_AUTOLOAD")}
    env.update(PYTHONPATH=f"{site}{os.pathsep}{REPO_ROOT}", HABANA_STAND_IN_RECORD=str(record), HF_HUB_OFFLINE="1")
    env.update(inherited or {})
    done = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert record.exists(), f"the stand-in bridge was never imported (rc {done.returncode}): {done.stderr[-1500:]}"
    assert done.returncode == 0, done.stderr[-1500:]
    return record.read_text()


TRAINING = ["--output_dir", "out", "--device", "hpu"]
ENTRY_POINTS = {
    "run_pretraining lazy": (["-m", "pretraining.run_pretraining", "--input_dir", "in", "--config_file", "tiny",
                              *TRAINING, "--mode", "lazy"], "1"),
    "run_pretraining graph": (["-m", "pretraining.run_pretraining", "--input_dir", "in", "--config_file", "tiny",
                               *TRAINING, "--mode", "graph"], "0"),
    "run_squad lazy": (["-m", "finetuning.run_squad", "--model_name_or_path", "base", "--data_dir", "in",
                        "--do_train", *TRAINING, "--mode", "lazy"], "1"),
    "run_glue lazy": (["-m", "finetuning.run_glue", "--task_name", "mrpc", "--model_name_or_path", "base",
                       "--data_dir", "in", "--do_train", *TRAINING, "--mode", "lazy"], "1"),
    "run_glue eager, auto": (["finetuning/run_glue.py", "--task_name", "mrpc", "--model_name_or_path", "base",
                              "--data_dir", "in", "--do_train", "--output_dir", "out", "--device", "auto"], "0"),
    "tools/predict": (["-m", "tools.predict", "--task_name", "mrpc", "--model_name_or_path", "m",
                       "--sentence1", "a", "--sentence2", "b", "--device", "hpu"], "0"),
    "demo_bert.py predict": ([str(REPO_ROOT / "demo_bert.py"), "predict", "--task_name", "mrpc",
                              "--model_name_or_path", "m", "--sentence1", "a", "--sentence2", "b"], "0"),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_lazy_mode_variable_is_set_before_the_bridge_loads(name, stand_in_site, tmp_path):
    argv, expected = ENTRY_POINTS[name]
    if argv[0].endswith(".py") and not os.path.isabs(argv[0]):
        argv = [str(REPO_ROOT / argv[0]), *argv[1:]]
    assert seen_by_the_bridge(argv, stand_in_site, tmp_path) == expected


def test_the_mode_flag_wins_over_an_inherited_variable(stand_in_site, tmp_path):
    """A shell that exported PT_HPU_LAZY_MODE=1 earlier does not turn --mode graph into lazy mode."""
    argv, _ = ENTRY_POINTS["run_pretraining graph"]
    assert seen_by_the_bridge(argv, stand_in_site, tmp_path, inherited={"PT_HPU_LAZY_MODE": "1"}) == "0"
