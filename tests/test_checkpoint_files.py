"""central.checkpoint writes files with the usual permissions (not mkstemp's owner-only 0600)."""
import os
import stat

from central.checkpoint import atomic_torch_save, atomic_write_text


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        text = atomic_write_text(tmp_path / "eval_results.json", "{}")
        ckpt = atomic_torch_save({"step": 1}, tmp_path / "ckpt_1.pt")
    finally:
        os.umask(old)
    for path in (text, ckpt):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_1.pt", "eval_results.json"]  # no temporaries
