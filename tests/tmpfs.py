"""A small tmpfs of the test's own, to make a store that is really full (needs root)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(mnt: Path, size: str = "8m", inodes: int = 4000) -> Iterator[Path]:
    """Mount a tmpfs at ``mnt`` for the block; skip the test (saying why) where that is impossible."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path) -> None:
    """Take every free byte, as a registry that cannot accept one more blob byte sees its disk."""
    with open(mnt / "filler", "wb", buffering=0) as f:
        for chunk in (65536, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    assert os.statvfs(mnt).f_bavail == 0
