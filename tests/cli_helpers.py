"""Running `cream` in tests: in this process (`run`) or in a subprocess with a timeout
(`run_process`), and the assertions every bad-input test makes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "cream_rt.cli"]
TIMEOUT = 120
ENV = {**os.environ, "CREAM_NO_PROGRESS": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def run(*argv, expect: int | None = None) -> subprocess.CompletedProcess:
    """`cream ARGV` in this process (stdout and stderr captured); with `expect`, assert the
    exit status."""
    import contextlib
    import io

    from cream_rt.cli import main

    args = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse: usage errors and --help
            code = exc.code if isinstance(exc.code, int) else 2
    result = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    if expect is not None:
        assert code == expect, f"cream {' '.join(args)} -> {code}\n{result.stderr[-2000:]}"
    return result


def run_process(*argv, expect: int | None = None, timeout: float = TIMEOUT, user: bool = False):
    """`python -m cream_rt.cli ARGV` in a subprocess with a timeout (as another user with `user`)."""
    args = [str(a) for a in argv]
    result = subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, env=ENV,
                            preexec_fn=unprivileged if user else None)
    if expect is not None:
        assert result.returncode == expect, f"cream {' '.join(args)} -> {result.returncode}\n{result.stderr[-2000:]}"
    return result


def unprivileged() -> None:
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)


def assert_one_error(result, *words: str) -> str:
    """Exit status 2, one `cream: error:` line mentioning `words`, no traceback, no warnings."""
    err = result.stderr
    lines = [line for line in err.splitlines() if line.startswith("cream: error:")]
    assert result.returncode == 2, f"exit {result.returncode}\n{err[-2000:]}"
    assert "Traceback" not in err and "Warning" not in err, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert "unexpected" not in lines[0], lines[0]
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    return lines[0]


def no_leftovers(folder: Path) -> None:
    left = [p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp" in p.name or ".probe" in p.name)]
    assert not left, left
