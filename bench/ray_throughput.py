"""Images/s of `cream localize --ray` against the single-process `cream localize` path on the
same images and model, measured in one run, and how the Ray pipeline scales from 1 to N actors.

    python -m bench.ray_throughput --images 1200 --out bench/results/ray_localize.json

The images are photo-sized JPEGs (500x375, textured) made once in --work; the model is an
untrained EfficientNet-Lite0 CREAM export at 224 px (timing only: the weights do not change
the work done). Each timing covers the whole pipeline including the model load and the actors'
start, but not Ray's own start (`ray.init`), which a cluster pays once, not per job."""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from cream_rt.atomic import write_json
from cream_rt.benchmark.machine import machine_info

from .targets import RAY_TARGET


def make_images(folder: Path, count: int, seed: int = 0, size: tuple[int, int] = (500, 375)) -> list[str]:
    """`count` JPEGs of `size` (width, height; default 500x375, CUB's usual), blurred noise with
    a filled circle: realistic decode work."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = sorted(str(p) for p in folder.glob("*.jpg"))
    if len(paths) >= count:
        return paths[:count]
    rng = np.random.default_rng(seed)
    width, height = size
    for i in range(count):
        image = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (0, 0), 3 * width / 500)
        centre = (int(rng.integers(width * 100 // 500, width * 400 // 500)),
                  int(rng.integers(height * 80 // 375, height * 300 // 375)))
        cv2.circle(image, centre, int(rng.integers(width * 30 // 500, width * 90 // 500)),
                   tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return sorted(str(p) for p in folder.glob("*.jpg"))[:count]


def export_benchmark_model(path: Path, backbone: str) -> None:
    from cream_rt.export.onnx_export import export_model
    from cream_rt.model import create_model

    if not path.is_file():
        export_model(create_model(backbone, 200, pretrained=False), path, "cream", 2)


def time_single(paths: list[str], model: str, batch_size: int) -> float:
    """Seconds of the single-process `cream localize` loop (model load included)."""
    from cream_rt.commands.localize_cmd import localize_all
    from cream_rt.runtime import Localizer

    started = time.perf_counter()
    with Localizer.load(model) as localizer:
        records = localize_all(localizer, [Path(p) for p in paths], batch_size, None, None)
    assert len(records) == len(paths)
    return time.perf_counter() - started


def time_ray(paths: list[str], model: str, work: Path, actors: int, batch_size: int, threads: int) -> float:
    from cream_rt.ray_localize import localize_ray

    out = work / f"ray-out-{actors}"
    shutil.rmtree(out, ignore_errors=True)
    summary = localize_ray(paths, model, out, actors=actors, batch_size=batch_size, threads=threads)
    assert summary["written"] == len(paths), summary
    return summary["seconds"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--actors", type=int, default=2, help="largest actor count (scaling from 1)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the best of each is kept")
    parser.add_argument("--work", default="/tmp/cream-ray-bench")
    parser.add_argument("--out", default=None, help="JSON result file (e.g. bench/results/ray_localize.json)")
    args = parser.parse_args(argv)
    from cream_rt.ray_localize import ray_session

    work = Path(args.work)
    paths = make_images(work / "images", args.images)
    model = work / f"{args.backbone}-cream.onnx"
    export_benchmark_model(model, args.backbone)
    single: list[float] = []
    ray_times: dict[int, list[float]] = {n: [] for n in range(1, args.actors + 1)}
    with ray_session() as ray:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        for _ in range(args.repeats):  # alternate, so drift on the machine hits both alike
            single.append(time_single(paths, str(model), args.batch_size))
            for actors in ray_times:
                threads = max(1, cpus // actors)
                ray_times[actors].append(time_ray(paths, str(model), work, actors, args.batch_size, threads))
    single_rate = len(paths) / min(single)
    rows = [{"actors": n, "threads_per_actor": max(1, cpus // n), "seconds": min(t),
             "images_per_s": round(len(paths) / min(t), 2)} for n, t in ray_times.items()]
    best = max(r["images_per_s"] for r in rows)
    ratio = best / single_rate
    result = {"benchmark": "ray_localize", "images": len(paths), "image_size": [500, 375], "model": args.backbone,
              "input_size": 224, "batch_size": args.batch_size, "ray_cpus": cpus,
              "single_process": {"seconds": min(single), "images_per_s": round(single_rate, 2)},
              "ray": rows, "ray_vs_single": round(ratio, 3),
              "scaling_1_to_n_actors": round(rows[-1]["images_per_s"] / rows[0]["images_per_s"], 3),
              "target": {"name": RAY_TARGET.name, "value": RAY_TARGET.value, "band": RAY_TARGET.band,
                         "passed": RAY_TARGET.passes(ratio)},
              "machine": machine_info(), "command": "python -m bench.ray_throughput " + " ".join(
                  sys.argv[1:] if argv is None else argv)}
    for row in rows:
        print(f"ray, {row['actors']} actor(s) x {row['threads_per_actor']} thread(s): {row['images_per_s']} img/s "
              f"({row['images_per_s'] / single_rate:.2f}x single-process)")
    print(f"single-process cream localize: {single_rate:.1f} img/s")
    print(RAY_TARGET.line(ratio))
    print(f"ray scaling 1 -> {rows[-1]['actors']} actors: {result['scaling_1_to_n_actors']}x")
    if args.out:
        write_json(args.out, result, what="--out")
    return result


if __name__ == "__main__":
    main()
