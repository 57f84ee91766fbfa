"""central.host_allocator: freed activations stay in the heap instead of being page-faulted in every step."""
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from central import host_allocator
from central.host_allocator import retain_freed_memory

REPO_ROOT = Path(__file__).resolve().parent.parent

# Where an activation-sized block comes from, and whether freeing 200 MB of them gives the pages back.
PROBE_SCRIPT = textwrap.dedent("""
    import sys, torch
    from central.host_allocator import retain_freed_memory
    if sys.argv[1] == "retain":
        assert retain_freed_memory()
    def mapping_of(address):
        for line in open("/proc/self/maps"):
            fields = line.split()
            low, high = (int(part, 16) for part in fields[0].split("-"))
            if low <= address < high:
                return fields[5] if len(fields) > 5 else "anonymous"
    def resident_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
    blocks = [torch.ones(10 << 18) for _ in range(20)]  # 20 x 10 MB, written
    where = mapping_of(blocks[0].data_ptr())
    before = resident_mb()
    del blocks
    print(where, before - resident_mb())
""")


def probe(mode: str):
    done = subprocess.run([sys.executable, "-c", PROBE_SCRIPT, mode], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    where, released_mb = done.stdout.split()
    return where, int(released_mb)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
def test_activation_sized_blocks_come_from_the_heap_and_stay_mapped_when_freed():
    # glibc's defaults: each 10 MB block is a fresh mmap and goes back to the kernel when freed (so the
    # next training step page-faults it in again).
    where, released_mb = probe("default")
    assert where != "[heap]" and released_mb >= 190, (where, released_mb)
    where, released_mb = probe("retain")
    assert where == "[heap]" and released_mb < 10, (where, released_mb)


def test_refuses_thresholds_that_would_wrap_around_in_a_c_int():
    with pytest.raises(ValueError, match="kept_free_heap must lie in .0, 2\\*\\*31"):
        retain_freed_memory(kept_free_heap=1 << 34)  # would reach mallopt as 0: trim on every free
    with pytest.raises(ValueError, match="heap_block_limit"):
        retain_freed_memory(heap_block_limit=-1)


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(host_allocator.platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(host_allocator.ctypes, "CDLL", lambda name: pytest.fail("must not load libc"))
    assert retain_freed_memory() is False
