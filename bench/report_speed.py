"""What `cream report` costs beyond the evaluation it shows (issue 42: under 20 s on 2 cores for
the 450 ilsvrc_dev test photos, and a page under 10 MB): `cream eval --mode cam` and `--mode
cream` timed as a user runs them, then `cream report` on the same checkpoint and split; each a
subprocess, wall time including start-up.

    python -m bench.report_speed --checkpoint FITTED.pt --out bench/results/report_speed.json
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cream_rt.atomic import write_json
from cream_rt.benchmark.machine import command_line, machine_info

from .accuracy import REAL_DATA

TARGET_EXTRA_S, TARGET_BYTES = 20.0, 10_000_000


def timed(argv: list[str]) -> float:
    """Seconds `cream ARGV` takes as a subprocess (it must succeed)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cream_rt.cli", *argv], check=True, capture_output=True,
                   env={**os.environ, "CREAM_NO_PROGRESS": "1"})
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Time both evals and the report; print and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a fitted checkpoint (bench.shipped's *-fit.pt)")
    p.add_argument("--data", default=str(REAL_DATA / "ilsvrc_dev"), help="data root (default: ilsvrc_dev)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", help="JSON file to write")
    args = p.parse_args(argv)
    data = ["--checkpoint", args.checkpoint, "--data", args.data, "--split", args.split]
    evals = {mode: timed(["eval", *data, "--mode", mode, "--json"]) for mode in ("cam", "cream")}
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        report_s = timed(["report", *data, "--out", str(page)])
        size = page.stat().st_size
    extra = report_s - sum(evals.values())
    result = {"benchmark": "report_speed", "eval_cam_s": evals["cam"], "eval_cream_s": evals["cream"],
              "report_s": report_s, "beyond_both_evals_s": extra, "page_bytes": size,
              "meets_target": extra <= TARGET_EXTRA_S and size <= TARGET_BYTES,
              "targets": {"beyond_eval_s": TARGET_EXTRA_S, "page_bytes": TARGET_BYTES},
              "machine": machine_info(), "command": command_line("report_speed", argv)}
    print(f"eval cam {evals['cam']:.1f} s, eval cream {evals['cream']:.1f} s, report {report_s:.1f} s: "
          f"{extra:+.1f} s beyond both evals; page {size / 1e6:.2f} MB")
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
