"""Whole-file writes: a failed write leaves the old file and no temporary behind."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from transferlab.atomic import atomic_save_npy, atomic_write, atomic_write_text, stale_temporaries


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "manifest.json"
    atomic_write_text(target, "old\n")

    def half_then_die(handle):
        handle.write(b"new, but only ha")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_die)
    assert target.read_text() == "old\n"
    assert stale_temporaries(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["manifest.json"]


def test_writes_land_whole_with_the_usual_permissions(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = atomic_save_npy(tmp_path / "deep" / "x.npy", array)  # parent folders are made
    assert np.array_equal(np.load(path), array)
    mode = stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not mkstemp's 0600
    atomic_write_text(tmp_path / "t.txt", "a\r\nb")
    assert (tmp_path / "t.txt").read_bytes() == b"a\r\nb"  # newlines as given


def test_stale_temporaries_finds_leftovers_by_target(tmp_path):
    (tmp_path / ".checkpoint.pt.tmp-abc").write_bytes(b"")
    (tmp_path / ".other.tmp-def").write_bytes(b"")
    assert [p.name for p in stale_temporaries(tmp_path, "checkpoint.pt")] == [".checkpoint.pt.tmp-abc"]
    assert len(stale_temporaries(tmp_path)) == 2
