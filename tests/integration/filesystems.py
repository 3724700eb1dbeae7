"""Small real filesystems for an integration test, mounted as root (tmpfs): to fill to the
last byte, or to remount read-only."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts small real filesystems that a test can fill: tmpfs(name, size) -> its path."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root")
    mounted = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        options = ["-t", "tmpfs", "-o", f"size={size}"]
        subprocess.run(["mount", *options, "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(path: Path) -> None:
    """Fill the filesystem `path` is on to the last byte, with the file `path`."""
    with open(path, "wb", buffering=0) as f:
        for block in (65536, 512):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * block)
