"""What a newcomer's first `cream eval --maps` costs against a warm one: the same command on
1,000 maps run as a subprocess with an empty numba cache (a fresh install), then again with the
cache that run left (every later run). `make setup` fills the cache, so only a pip install
without it pays the first figure, announced on stderr.

    python -m cream_rt.bench.studies.first_run --maps 1000 --out bench/results/studies/eval_first_run.json
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cream_rt.atomic import write_json

from ..machine import command_line, machine_info


def make_split(root: Path, count: int) -> tuple[Path, Path]:
    """A synthetic test split of `count` 224 px images and a smooth random score map for each."""
    import cv2

    from cream_rt.cli import main as cream

    data, maps = root / "synth", root / "maps"
    if not (data / "metadata" / "test" / "image_ids.txt").is_file():
        assert cream(["synth", "--out", str(data), "--train", "8", "--val", "8", "--test", str(count),
                      "--classes", "4", "--size", "224"]) == 0
    ids = (data / "metadata" / "test" / "image_ids.txt").read_text().split()
    rng = np.random.default_rng(0)
    for image_id in ids:
        path = maps / f"{image_id}.npy"
        if not path.is_file():
            m = cv2.GaussianBlur(rng.random((224, 224)).astype(np.float32), (0, 0), 12)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, (m - m.min()) / (m.max() - m.min()))
    return data / "metadata" / "test", maps


def timed_eval(split: Path, maps: Path, cache: Path) -> tuple[float, str]:
    """Wall seconds and stderr of `cream eval --maps` with numba's cache in `cache`."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), CREAM_NO_PROGRESS="1")
    command = [sys.executable, "-m", "cream_rt.cli", "eval", "--maps", str(maps), "--metadata", str(split), "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-400:]}")
    return seconds, done.stderr


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=1000)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "cream-first-run-bench"))
    parser.add_argument("--out", default=None, help="JSON result file (e.g. bench/results/studies/eval_first_run.json)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    split, maps = make_split(work, args.maps)
    with tempfile.TemporaryDirectory() as cache:
        cold, cold_err = timed_eval(split, maps, Path(cache))
        warm = min(timed_eval(split, maps, Path(cache))[0] for _ in range(2))
    announced = "compiling the evaluator's numba kernels" in cold_err
    result = {"benchmark": "eval_first_run", "maps": args.maps, "first_run_seconds": round(cold, 2),
              "warm_run_seconds": round(warm, 2), "first_run_extra_seconds": round(cold - warm, 2),
              "first_vs_warm": round(cold / warm, 2), "announced_on_stderr": announced,
              "machine": machine_info(),
              "command": command_line("studies.first_run", argv)}
    print(f"cream eval --maps on {args.maps} maps: first run {cold:.1f} s (empty numba cache), warm {warm:.1f} s "
          f"({cold / warm:.1f}x); announced on stderr: {announced}")
    if args.out:
        write_json(args.out, result, what="--out")
    return result


if __name__ == "__main__":
    main()
