"""The house rules of the package (issue 39): what ships, what importing it does, how the library
speaks, and that its public entries carry an example."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_the_package_without_the_repository_benchmarks(tmp_path):
    """bench/ (studies, test references, a default path to ../shared) stays in the repository; the
    engines `cream bench` runs ship as cream_rt.benchmark."""
    import shutil

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout: the tracked files are unknown")
    source = tmp_path / "checkout"  # a copy, so that the build leaves nothing in the checkout
    for name in tracked:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "--wheel-dir", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {result.stderr.strip().splitlines()[-1:]}")
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    assert "cream_rt/benchmark/runner.py" in names and "cream_rt/runtime.py" in names
    assert not [n for n in names if n.startswith(("bench/", "cream_rt/bench/", "tests/"))]
    text = b"".join(zipfile.ZipFile(next(tmp_path.glob("*.whl"))).read(n) for n in names if n.endswith(".py"))
    assert b"shared/data/real" not in text


def test_importing_the_package_changes_nothing_outside_it():
    """No environment variable, OpenCV setting or logging configuration is touched by an import of
    every torch-free module; `configure_opencv` (the CLI's call) makes them."""
    code = ("import logging, os, cv2\n"
            "level = cv2.utils.logging.getLogLevel()\n"
            "env, handlers = dict(os.environ), list(logging.getLogger().handlers)\n"
            "import cream_rt, cream_rt.runtime, cream_rt.preprocess, cream_rt.metrics, cream_rt.scoring\n"
            "import cream_rt.ray_localize, cream_rt.cli, cream_rt.manifest, cream_rt.config\n"
            "assert dict(os.environ) == env, set(os.environ) ^ set(env)\n"
            "assert cv2.utils.logging.getLogLevel() == level\n"
            "assert logging.getLogger().handlers == handlers and not logging.getLogger('cream_rt').handlers\n"
            "cream_rt.preprocess.configure_opencv()\n"
            "assert os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'] == str(cream_rt.preprocess.MAX_IMAGE_PIXELS)\n"
            "assert cv2.utils.logging.getLogLevel() == cv2.utils.logging.LOG_LEVEL_SILENT\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_library_logs_and_the_cli_prints(caplog, capsys, monkeypatch):
    """A skipped image is a log record (logger cream_rt.unreadable), nothing on stderr; the CLI
    shows warnings as `cream: warning:` lines and progress records as plain lines."""
    from cream_rt import cli
    from cream_rt.unreadable import UnreadableImages

    package = logging.getLogger("cream_rt")  # as before any `cream` ran in this process
    monkeypatch.setattr(package, "handlers", [])
    monkeypatch.setattr(package, "propagate", True)

    unreadable = UnreadableImages(5)
    unreadable.add("a.jpg", "a.jpg: not a decodable image")
    with caplog.at_level(logging.WARNING, logger="cream_rt"):
        unreadable.warn("eval")
    assert [r.name for r in caplog.records] == ["cream_rt.unreadable"]
    assert "skipped 1 unreadable image (a.jpg" in caplog.records[0].getMessage()
    assert capsys.readouterr().err == ""
    handler = cli._StderrLines()
    handler.emit(logging.makeLogRecord({"msg": "skipped %d", "args": (1,), "levelno": logging.WARNING,
                                        "levelname": "WARNING"}))
    handler.emit(logging.makeLogRecord({"msg": "epoch 1", "levelno": logging.INFO, "levelname": "INFO"}))
    assert capsys.readouterr().err == "cream: warning: skipped 1\nepoch 1\n"


@pytest.mark.parametrize("entry", ["cream_rt.runtime:Localizer", "cream_rt.runtime:Localizer.__call__",
                                   "cream_rt.runtime:Localizer.stream", "cream_rt.metrics:BoxEvaluator",
                                   "cream_rt.config:CreamConfig", "cream_rt.preprocess:configure_opencv",
                                   "cream_rt.model.network:create_model", "cream_rt.model.em:reactivate",
                                   "cream_rt.model.checkpoint:load_checkpoint", "cream_rt.train.trainer:train",
                                   "cream_rt.train.embeddings:fit_embeddings"])
def test_public_entries_carry_an_example(entry):
    import importlib

    module, _, name = entry.partition(":")
    if module.startswith(("cream_rt.model", "cream_rt.train")):
        pytest.importorskip("torch")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    assert "Example:" in (obj.__doc__ or ""), f"{entry} has no Example: in its docstring"


def test_config_examples_run():
    """The doctest examples of the torch-free model description run as written."""
    import doctest

    import cream_rt.config

    assert doctest.testmod(cream_rt.config).failed == 0


def test_an_output_in_a_missing_tree_is_refused_and_one_missing_folder_is_made(tmp_path):
    """`--out /nonexistent/dir/r.jsonl`: one line, nothing created; `--out runs/r.jsonl` with
    runs/ missing makes runs/ (as mkdir would) and says so in the log."""
    from cream_rt.atomic import check_output_file
    from cream_rt.errors import OutputError

    with pytest.raises(OutputError, match=r"the folder .*nowhere does not exist \(create it first\)"):
        check_output_file(tmp_path / "nowhere" / "dir" / "r.jsonl", "--out")
    assert not (tmp_path / "nowhere").exists()
    assert check_output_file(tmp_path / "runs" / "r.jsonl", "--out").parent.is_dir()


def test_a_file_that_is_not_a_torch_file_says_so(tmp_path):
    """A text file given as a checkpoint: 'not a torch file', not a remark about Python objects."""
    pytest.importorskip("torch")
    from cream_rt.errors import ModelFileError
    from cream_rt.model.checkpoint import load_checkpoint

    text = tmp_path / "notes.pt"
    text.write_text("# not weights\n")
    with pytest.raises(ModelFileError, match=r"notes.pt: not a readable cream checkpoint \(not a torch file\)"):
        load_checkpoint(text)
