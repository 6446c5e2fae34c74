"""Durable writes, and one-line errors of the entry points that have no other test file."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from nas.checkpoint import save_atomic
from supernet.files import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


def _record_sync_and_rename(monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.realpath(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_atomic_writes_sync_the_file_before_the_rename(tmp_path, monkeypatch):
    for write in (lambda p: atomic_write_text(p, "x: 1\n"), lambda p: save_atomic({"a": torch.ones(2)}, p)):
        events = _record_sync_and_rename(monkeypatch)
        target = tmp_path / "out.bin"
        write(target)
        replaced = [path for kind, path in events if kind == "replace"]
        assert len(replaced) == 1
        synced_before = [path for kind, path in events[: events.index(("replace", replaced[0]))] if kind == "fsync"]
        assert replaced[0] in synced_before  # the very file that is renamed was flushed first
        assert ("fsync", os.path.realpath(tmp_path)) in events  # and the folder after the rename
        monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temporary file left behind


def test_pipeline_bad_argument_is_one_line():
    for args in (["--target-ms", "-1"], ["--target-ms", "fast"], []):
        r = subprocess.run(
            [sys.executable, "-m", "nas.pipeline", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
