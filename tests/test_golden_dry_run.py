"""The launcher's --dry_run output (commands and environment) for every seed line and a set of other lines
is exactly the recorded tests/golden/dry_run.txt. A change that moves a command or a default on purpose
re-records the file (``PYTHONPATH=. python tests/golden_dry_run.py > tests/golden/dry_run.txt``) in its own
commit that lists each intended difference (docs/changes.md)."""
import difflib

import pytest

import golden_dry_run

GOLDEN = golden_dry_run.REPO_ROOT / "tests" / "golden" / "dry_run.txt"


def test_dry_run_output_matches_the_golden_file(shared_data):
    if not golden_dry_run.SEED_FILE.is_file():
        pytest.fail(f"{golden_dry_run.SEED_FILE} is missing")
    expected = GOLDEN.read_text(encoding="utf-8")
    actual = golden_dry_run.golden_text()
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            "tests/golden/dry_run.txt", "now", n=1))
        pytest.fail(f"the launcher's dry-run output moved:\n{diff[:6000]}")
