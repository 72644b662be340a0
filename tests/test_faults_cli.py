"""Faults of the environment and bad values reach the user as one line (``--json``: one JSON
object on stdout), never a traceback, and nothing finished is lost."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from transferlab.cli import main

TINY = ["--source", "timm:mobilenetv3_small_050", "--weights", "none", "--no-progress"]


def image_folder(root: Path, splits=("train", "test"), classes=("a", "b"), per_class: int = 2) -> Path:
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                Image.new("RGB", (40, 40), (40 * c, 20 * k, 200)).save(folder / f"{name}{k}.jpg")
    return root


def one_line_error(capsys, argv, *fragments, code=2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("transferlab: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, readonly: bool = False):
    """A real tiny file system (root only); the test is skipped where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:80]})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# -- tracebacks that became one line -----------------------------------------------------------
def test_symlink_loop_in_a_data_folder(tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    os.symlink("loop.jpg", data / "train" / "a" / "loop.jpg")
    one_line_error(capsys, ["extract", *TINY, "--data", str(data)], "loop.jpg", "symbolic link loop")


def test_file_name_that_is_not_utf8(tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    bad = os.fsencode(data / "train" / "a") + b"/\xff\xfe.jpg"
    Path(os.fsdecode(bad)).write_bytes((data / "train" / "a" / "a0.jpg").read_bytes())
    one_line_error(capsys, ["extract", *TINY, "--data", str(data), "--out", str(tmp_path / "out")],
                   "not valid UTF-8", "rename", str(data / "train" / "a"), "\\xff\\xfe.jpg")


def test_study_yaml_that_is_not_utf8(tmp_path, capsys):
    config = tmp_path / "s.yaml"
    config.write_bytes(b"name: ok\nsources: [efficientnet_lite0]\ntasks: [digits]\ndescription: caf\xe9\n")
    one_line_error(capsys, ["study", str(config), "--dry-run"], f"{config}:4", "not UTF-8")


@pytest.mark.parametrize("value", ["0", "-2"])
def test_batch_size_below_one_is_refused_before_compute(tmp_path, capsys, value):
    data = image_folder(tmp_path / "data")
    with pytest.raises(SystemExit) as stop:
        main(["extract", *TINY, "--data", str(data), "--batch-size", value])
    assert stop.value.code == 2 and "must be an integer >= 1" in capsys.readouterr().err


def test_zero_byte_weights_file(tmp_path, capsys):
    weights = tmp_path / "empty.pth"
    weights.write_bytes(b"")
    data = image_folder(tmp_path / "data")
    one_line_error(capsys, ["extract", "--source", "timm:mobilenetv3_small_050", "--weights", str(weights),
                            "--data", str(data)], "empty.pth", "empty (0 bytes)")


def test_annotation_list_that_cannot_be_read(tmp_path, capsys, monkeypatch):
    from transferlab.data import generic

    data = tmp_path / "csv"
    image_folder(tmp_path / "imgs")
    data.mkdir()
    for split in ("train", "test"):
        (data / f"{split}.csv").write_text("path,label\n../imgs/train/a/a0.jpg,a\n")
    real_open = open

    def denied(path, *args, **kwargs):  # root ignores chmod; refuse as the kernel would for a user
        if str(path).endswith("train.csv"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(generic, "open", denied, raising=False)
    one_line_error(capsys, ["extract", *TINY, "--data", str(data)],
                   "train.csv", "permission denied")


def test_out_naming_an_existing_file(tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    one_line_error(capsys, ["extract", *TINY, "--data", str(data), "--cache", str(tmp_path / "c"), "--out", str(out)],
                   "--out", "out.txt", "is a file, not a folder")
    assert out.read_text() == "keep me"


def test_transferlab_cache_naming_a_file(tmp_path, capsys, monkeypatch):
    data = image_folder(tmp_path / "data")
    not_a_folder = tmp_path / "cachefile"
    not_a_folder.write_text("x")
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(not_a_folder))
    one_line_error(capsys, ["extract", *TINY, "--data", str(data)], "cachefile", "is a file, not a folder",
                   "TRANSFERLAB_CACHE")
    one_line_error(capsys, ["probe", *TINY, "--task", "digits", "--quick"], "cachefile", "TRANSFERLAB_CACHE")


def test_read_only_cache_that_must_be_written(tmp_path, capsys):
    data = image_folder(tmp_path / "data")
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as cache:
        one_line_error(capsys, ["extract", *TINY, "--data", str(data), "--cache", str(cache)],
                       str(cache), "read-only file system", "--cache")


def test_disk_full_under_the_cache_loses_no_finished_shard(tmp_path, capsys, monkeypatch):
    from transferlab.features import store as store_module

    monkeypatch.setattr(store_module, "SHARD_SIZE", 2)
    data = image_folder(tmp_path / "data", per_class=3)  # train: 6 images = 3 shards
    with tmpfs(tmp_path / "small", "300k") as cache:
        argv = ["extract", *TINY, "--data", str(data), "--cache", str(cache), "--layers", "-1,-2,-3",
                "--pool", "avg,max,grid3", "--splits", "train"]
        # fill the disk, then free 40 kB: room for a shard or so, not for all three
        filler = cache / "filler.bin"
        with open(filler, "wb") as handle, contextlib.suppress(OSError):
            handle.write(b"\0" * (300 * 1024))
        filler.write_bytes(b"\0" * (filler.stat().st_size - 40 * 1024))
        line = one_line_error(capsys, argv, "no space left on the device", "rerun to resume")
        assert "Traceback" not in line
        assert not list(cache.rglob(".*.tmp-*"))  # no half-written temporaries left behind
        filler.unlink()
        assert main([*argv, "--json"]) == 0
        assert "damaged" not in capsys.readouterr().err  # what was finished before was whole


def test_disk_full_simulated_at_fsync(tmp_path, capsys, monkeypatch):
    """ENOSPC raised by the OS call itself (fsync reports it on NFS and quota'd disks)."""
    from transferlab import atomic

    data = image_folder(tmp_path / "data")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    one_line_error(capsys, ["extract", *TINY, "--data", str(data), "--cache", str(tmp_path / "c")],
                   "no space left on the device")
    monkeypatch.undo()
    assert not list((tmp_path / "c").rglob(".*.tmp-*"))


def test_sqlite_disk_full_is_one_line(tmp_path):
    with tmpfs(tmp_path / "tiny", "64k") as run_dir:
        connection = sqlite3.connect(run_dir / "results.sqlite")
        connection.execute("create table t (x blob)")
        with pytest.raises(sqlite3.OperationalError) as caught:
            for _ in range(100):
                connection.execute("insert into t values (?)", (os.urandom(8192),))
                connection.commit()
        connection.close()
    from transferlab.commands._errors import describe

    message, status = describe(caught.value)
    assert status == 2 and "full" in message and "results.sqlite" in message and "rerun to resume" in message


def test_unexpected_exception_is_one_line_and_debug_shows_it(tmp_path, capsys, monkeypatch):
    from transferlab.commands import cache

    monkeypatch.setattr(cache, "run", lambda args: 1 / 0)
    assert main(["cache", "ls"]) == 1
    err = capsys.readouterr().err
    assert "internal error ZeroDivisionError" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        main(["cache", "ls", "--debug"])


# -- --json: errors are JSON on stdout ------------------------------------------------------------
def test_json_error_is_a_json_object_on_stdout(tmp_path, capsys):
    assert main(["extract", *TINY, "--data", str(tmp_path / "nowhere"), "--json"]) == 2
    payload = json.loads(capsys.readouterr().out)
    assert "nowhere" in payload["error"] and payload["exit_status"] == 2


def test_json_usage_error_is_a_json_object_on_stdout(capsys):
    with pytest.raises(SystemExit):
        main(["probe", "--task", "digits", "--pca", "-1", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert "--pca" in payload["error"] and payload["type"] == "UsageError"


# -- range checks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,fragment", [
    (["probe", "--task", "digits", "--pca", "-3"], "--pca"),
    (["retrieve", "--task", "photo_copies", "--qe", "-5"], "--qe"),
    (["finetune", "--source", "x", "--task", "digits", "--out", "o", "--epochs", "-3"], "--epochs"),
    (["finetune", "--source", "x", "--task", "digits", "--out", "o", "--lr", "-1"], "--lr"),
    (["finetune", "--source", "x", "--task", "digits", "--out", "o", "--lr", "inf"], "--lr"),
    (["train-source", "--task", "digits", "--out", "o", "--momentum", "1.5"], "--momentum"),
    (["train-source", "--task", "digits", "--out", "o", "--batch-size", "0"], "--batch-size"),
])
def test_cli_numbers_are_range_checked(capsys, argv, fragment):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {fragment}" in err and "must be" in err, err


@pytest.mark.parametrize("cs", ["inf", "nan", "1,-1"])
def test_probe_cs_must_be_finite_and_positive(capsys, cs):
    one_line_error(capsys, ["probe", *TINY, "--task", "digits", "--quick", "--Cs", cs], "--Cs")


@pytest.mark.parametrize("yaml_text,key", [
    ("finetune: {epochs: -3}", "finetune.epochs"),
    ("finetune: {lr: -1}", "finetune.lr"),
    ("finetune: {batch_size: 0}", "finetune.batch_size"),
    ("execution: {batch_size: 0}", "execution.batch_size"),
    ("execution: {batch_size: -4}", "execution.batch_size"),
    ("retrieval: {qe: [-5]}", "retrieval.qe.0"),
    ("probe: {Cs: [.inf]}", "probe.Cs"),
    ("probe: {Cs: [.nan]}", "probe.Cs"),
    ("factors: {pca_dims: [-1]}", "factors.pca_dims"),
    ("train: [{epochs: 0}]", "train.0.epochs"),
    ("train: [{resolution: 8}]", "train.0.resolution"),
    ("train: [{snapshots: [0]}]", "train.0.snapshots.0"),
])
def test_study_config_numbers_are_range_checked(tmp_path, capsys, yaml_text, key):
    config = tmp_path / "s.yaml"
    config.write_text(f"name: s\nsources: [efficientnet_lite0]\ntasks: [digits]\n{yaml_text}\n")
    assert main(["study", str(config), "--dry-run"]) == 2
    assert key in capsys.readouterr().err


def test_duplicate_yaml_key_names_the_key_and_line(tmp_path, capsys):
    config = tmp_path / "s.yaml"
    config.write_text("name: s\nsources: [efficientnet_lite0]\ntasks: [digits]\n"
                      "factors: {layers: [-1, -2]}\nprobe: {loss: logistic}\nfactors: {pooling: [max]}\n")
    one_line_error(capsys, ["study", str(config), "--dry-run"], f"{config}:6", "'factors'", "line 4")


def test_duplicate_key_in_a_nested_mapping(tmp_path, capsys):
    config = tmp_path / "s.yaml"
    config.write_text("name: s\nsources: [efficientnet_lite0]\ntasks: [digits]\n"
                      "execution:\n  batch_size: 8\n  seed: 1\n  batch_size: 16\n")
    one_line_error(capsys, ["study", str(config), "--dry-run"], f"{config}:7", "'batch_size'")


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../outside", "runs/../../x", "~/x"])
def test_run_name_that_leaves_runs_is_refused_without_out(tmp_path, capsys, name):
    config = tmp_path / "s.yaml"
    config.write_text(f"name: {json.dumps(name)}\nsources: [efficientnet_lite0]\ntasks: [digits]\n")
    one_line_error(capsys, ["study", str(config), "--dry-run"], "--out")
    assert main(["study", str(config), "--dry-run", "--out", str(tmp_path / "run")]) == 0


def test_a_nested_relative_run_name_is_fine(tmp_path, capsys):
    config = tmp_path / "s.yaml"
    config.write_text("name: group/mine\nsources: [efficientnet_lite0]\ntasks: [digits]\n")
    assert main(["study", str(config), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_dir"] == str(Path("runs/group/mine"))


def test_disk_full_under_the_run_directory_then_resume(tmp_path, capsys):
    """A real full disk under RUN_DIR (SQLite's "database or disk is full", or ENOSPC from the
    lock/report files): one line, the results committed so far intact, and a rerun finishes."""
    import yaml

    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({
        "name": "full", "sources": [{"spec": "timm:mobilenetv3_small_050", "weights": "none"}],
        "tasks": ["digits"], "quick": True, "optimal": False,
        "factors": {"layers": [-1, -2], "pooling": ["avg", "max"], "pca_dims": [0, 8, 16]},
        "probe": {"Cs": [1.0]}}))
    argv = ["study", str(config), "--no-report", "--no-progress", "--cache", str(tmp_path / "cache")]
    with tmpfs(tmp_path / "disk", "1m") as disk:
        filler = disk / "filler.bin"
        with open(filler, "wb") as handle, contextlib.suppress(OSError):
            handle.write(b"\0" * (1 << 20))
        filler.write_bytes(b"\0" * (filler.stat().st_size - 24 * 1024))  # ~24 kB left
        run_dir = disk / "run"
        code = main([*argv, "--out", str(run_dir)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        line = [x for x in err.splitlines() if x.startswith("transferlab: error:")]
        assert len(line) == 1 and ("full" in line[0] or "no space" in line[0]), err
        assert "not a transferlab results database" not in line[0]  # a full disk is not a damaged file
        filler.unlink()
        if (run_dir / "results.sqlite").exists():
            with sqlite3.connect(run_dir / "results.sqlite") as con:  # what was committed is whole
                assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert main([*argv, "--out", str(run_dir)]) == 0, capsys.readouterr().err
        with sqlite3.connect(run_dir / "results.sqlite") as con:
            assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1 + 1 + 1 + 2


@pytest.mark.parametrize("exc,fragments", [
    (OSError(errno.ENOSPC, "No space left on device", "/d/x.npy"), ["/d/x.npy", "no space", "rerun to resume"]),
    (PermissionError(errno.EACCES, "Permission denied", "/d/gt.txt"), ["/d/gt.txt", "permission denied"]),
    (OSError(errno.EROFS, "Read-only file system", "/ro/c"), ["/ro/c", "read-only", "--cache"]),
    (OSError(errno.EIO, "Input/output error", "/d/y"), ["/d/y", "input/output error"]),
    (OSError("cannot identify image file"), ["cannot identify image file"]),
    (FileExistsError(errno.EEXIST, "File exists", "/d/out"), ["/d/out", "already exists"]),
])
def test_os_errors_name_the_path_and_what_to_do(exc, fragments):
    from transferlab.commands._errors import describe

    message, status = describe(exc)
    assert status == 2 and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_python_dash_m_runs_the_same_cli(tmp_path):
    """`python -m transferlab` is the CLI: same help, and a bad command is the same one-line error."""
    import sys

    ok = subprocess.run([sys.executable, "-m", "transferlab", "tasks", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "usage: transferlab tasks" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "transferlab", "probe", "--pool", "grid0", "--task", "digits"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "grid0" in bad.stderr


def test_quick_exit_keeps_output_status_and_atexit_handlers(tmp_path):
    """The console entry ends with os._exit (skipping Python's module teardown): everything
    printed still arrives through a pipe, the status is the command's, atexit handlers ran."""
    import json
    import sys

    marker = tmp_path / "atexit-ran"
    code = ("import atexit, pathlib, sys; "
            f"atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text('yes')); "
            "sys.argv = ['transferlab', 'sources', '--json']; "
            "from transferlab.cli import entry; entry()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["builtin"]  # the whole document, flushed before the exit
    assert marker.read_text() == "yes"
    bad = subprocess.run([sys.executable, "-m", "transferlab", "probe", "--source", "nope", "--task", "digits"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "unknown source 'nope'" in bad.stderr
