"""End-to-end images/s of `cream localize` over a folder of photo-sized JPEGs, as a user runs it,
for the fp32 and the int8 export of one model, with a stage breakdown (read, decode, resize +
normalise, inference, boxes, write) so that the next step is visible.

    python -m bench.throughput --images 2000 --out bench/results/throughput.json
    python -m bench.throughput --folder PHOTOS --models fp32=m.onnx,int8=m-int8.onnx --large 0 \\
        --out bench/results/throughput_real.json      # a folder of real photos, read in place

The model is EfficientNet-Lite0 CREAM T=2 at 224 px with its ImageNet weights (200 classes; the
classifier and the embeddings are untrained, which changes no work done); the int8 export is
calibrated on 64 of the benchmark images. Each end-to-end figure is `cream localize DIR` run as
a subprocess, timed from its start to its exit (start-up included) and also net of the start-up
(the same command on 16 images, subtracted). Ratios are from one run; absolute figures hold for
the machine recorded with them."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cream_rt.atomic import write_json
from cream_rt.benchmark.machine import command_line, machine_info

from .ray_throughput import make_images

MILLION = 1_000_000
STARTUP_IMAGES = 16
TARGETS = {"fp32_img_s_before": 58.21, "int8_vs_that": 2.0, "reach_img_s": MILLION / 3600}


def build_models(work: Path, backbone: str, input_size: int, calibration: list[str]) -> dict[str, str]:
    """fp32 and int8 CREAM T=2 exports of the backbone with its ImageNet weights (made once)."""
    from cream_rt.export.onnx_export import export_model
    from cream_rt.export.quantize import calibration_batches, quantize_export
    from cream_rt.model import create_model

    fp32, int8 = work / f"{backbone}-{input_size}-fp32.onnx", work / f"{backbone}-{input_size}-int8.onnx"
    if not fp32.is_file():
        model = create_model(backbone, 200, pretrained=True, input_size=input_size)
        export_model(model.eval(), fp32, "cream", 2)
    if not int8.is_file():
        from cream_rt.runtime import OnnxPredictor

        m = OnnxPredictor.load(fp32).manifest
        quantize_export(fp32, int8, calibration_batches(calibration, m.input_size, m.mean, m.std))
    return {"fp32": str(fp32), "int8": str(int8)}


def stage_breakdown(model: str, paths: list[str], batch_size: int, engine: str = "onnxruntime") -> dict:
    """Milliseconds per image of each stage run alone, one after the other, on `paths`: what the
    pipeline would cost without overlap (inference on all cores, the rest on one thread)."""
    from cream_rt.preprocess import decode_image_bytes, normalize, read_image_bytes, resize_for_model
    from cream_rt.runtime import Localizer

    with Localizer.load(model, engine=engine) as localizer:
        m = localizer.manifest
        t = {k: 0.0 for k in ("read", "decode", "resize_normalize", "inference", "boxes", "write")}
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            t0 = time.perf_counter()
            raw = [read_image_bytes(p) for p in chunk]
            t1 = time.perf_counter()
            decoded = [decode_image_bytes(r, p) for r, p in zip(raw, chunk)]
            t2 = time.perf_counter()
            x = normalize(np.stack([resize_for_model(d, m.input_size) for d in decoded]), m.mean, m.std)
            t3 = time.perf_counter()
            ids = -np.ones(len(chunk), np.int64)
            logits, maps, regressed = localizer.predictor.run(x, ids)
            t4 = time.perf_counter()
            results = localizer.postprocess(logits, maps, ids, [(d.shape[1], d.shape[0]) for d in decoded], False,
                                            regressed)
            t5 = time.perf_counter()
            lines = [json.dumps({"image": p, **r.to_dict()}) for p, r in zip(chunk, results)]
            t6 = time.perf_counter()
            assert len(lines) == len(chunk)
            for key, a, b in (("read", t0, t1), ("decode", t1, t2), ("resize_normalize", t2, t3),
                              ("inference", t3, t4), ("boxes", t4, t5), ("write", t5, t6)):
                t[key] += b - a
    per_image = {k: round(v * 1e3 / len(paths), 3) for k, v in t.items()}
    per_image["sum"] = round(sum(per_image.values()), 3)
    return per_image


def time_cli(folder: str, model: str, out: Path, batch_size: int, extra: list[str] | None = None) -> float:
    """Wall seconds of `cream localize FOLDER --model MODEL` as a subprocess (start-up included)."""
    command = [sys.executable, "-m", "cream_rt.cli", "localize", folder, "--model", model, "--out", str(out),
               "--batch-size", str(batch_size)] + (extra or [])
    env = dict(os.environ, CREAM_NO_PROGRESS="1")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    return seconds


def end_to_end(folder: str, small_folder: str, count: int, model: str, work: Path, batch_size: int,
               repeats: int, engine: str = "onnxruntime") -> dict:
    """Best of `repeats` runs over `count` images, and net of the start-up measured on 16."""
    extra = ["--engine", engine]
    full = min(time_cli(folder, model, work / "out.jsonl", batch_size, extra) for _ in range(repeats))
    startup = min(time_cli(small_folder, model, work / "small.jsonl", batch_size, extra) for _ in range(repeats))
    net = (count - STARTUP_IMAGES) / max(full - startup, 1e-9)
    return {"seconds": round(full, 3), "images_per_s": round(count / full, 2),
            "startup_seconds_16_images": round(startup, 3), "images_per_s_net_of_startup": round(net, 2),
            "images_per_hour_net": round(net * 3600)}


def reduced_decode_parity(model: str, paths: list[str], batch_size: int) -> dict:
    """The maps and boxes of `--reduced-decode` against a full decode of the same JPEGs: map
    differences (max, p99), the share of boxes at IoU >= 0.99 and the largest box shift."""
    from cream_rt.parity import box_agreement
    from cream_rt.preprocess import decode_image_bytes, read_image_bytes
    from cream_rt.runtime import DEFAULT_THRESHOLD, Localizer

    diffs, ious, shift = [], [], 0.0
    with Localizer.load(model) as localizer:
        size = localizer.manifest.input_size
        for start in range(0, len(paths), batch_size):
            raw = [(read_image_bytes(p), p) for p in paths[start:start + batch_size]]
            full = localizer([decode_image_bytes(r, p) for r, p in raw], return_maps=True)
            reduced = localizer([decode_image_bytes(r, p, size) for r, p in raw], return_maps=True)
            a, b = np.stack([r.map for r in full]), np.stack([r.map for r in reduced])
            diffs.append(np.abs(a - b).reshape(len(a), -1))
            ious.append(box_agreement(a, b, DEFAULT_THRESHOLD))
            shift = max(shift, max(float(np.abs(np.subtract(f.boxes[0], r.boxes[0])).max())
                                   for f, r in zip(full, reduced)))
    diffs, ious = np.concatenate(diffs), np.concatenate(ious)
    return {"images": len(paths), "maps_max_abs_diff": round(float(diffs.max()), 4),
            "maps_p99_abs_diff": round(float(np.percentile(diffs, 99)), 4),
            "box_iou_ge_099_fraction": round(float((ious >= 0.99).mean()), 4),
            "box_iou_min": round(float(ious.min()), 4), "box_max_shift_px": round(shift, 1)}


def jpeg_split(data: Path, out: Path, split: str = "test", quality: int = 90) -> Path:
    """A copy of a data root's split with every image re-encoded as JPEG (metadata rewritten to
    the .jpg names): `--reduced-decode` only applies to JPEGs."""
    import cv2

    source = data / "metadata" / split
    target = out / "metadata" / split
    if (target / "image_ids.txt").is_file():
        return out
    for image_id in (source / "image_ids.txt").read_text().split():
        image = cv2.imread(str(data / "images" / image_id), cv2.IMREAD_COLOR)
        path = (out / "images" / image_id).with_suffix(".jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    target.mkdir(parents=True, exist_ok=True)
    for file in source.glob("*.txt"):
        (target / file.name).write_text(file.read_text().replace(".png", ".jpg"))
    return out


def reduced_decode_accuracy(model: str, data: Path, split: str = "test", batch_size: int = 32) -> dict:
    """MaxBoxAccV2 and GT-known Loc of a trained export on a JPEG split decoded in full and with
    `--reduced-decode`, and the map and box differences between the two (parity terms)."""
    from cream_rt.metadata import read_split
    from cream_rt.parity import box_agreement
    from cream_rt.preprocess import decode_image_bytes, preprocess_batch, read_image_bytes
    from cream_rt.runtime import DEFAULT_THRESHOLD, OnnxPredictor
    from cream_rt.scoring import SplitScorer, batches

    predictor = OnnxPredictor.load(model)
    m = predictor.manifest
    meta = read_split(data / "metadata" / split)
    scorers = {k: SplitScorer(meta, m.input_size, 0.01) for k in ("full", "reduced")}
    diffs, ious, reduced_count = [], [], 0
    for chunk in batches(meta.image_ids, batch_size):
        raw = [(read_image_bytes(data / "images" / i), i) for i in chunk]
        labels = np.array([meta.class_labels[i] for i in chunk], np.int64)
        maps = {}
        for name, reduce_to in (("full", None), ("reduced", m.input_size)):
            arrays = [decode_image_bytes(r, i, reduce_to) for r, i in raw]
            if reduce_to:
                reduced_count += sum(a.shape[0] < 2 * m.input_size for a in arrays)
            logits, maps[name] = predictor(preprocess_batch(arrays, m.input_size, m.mean, m.std), labels)
            scorers[name].add(chunk, logits, maps[name])
        diffs.append(np.abs(maps["full"] - maps["reduced"]).reshape(len(chunk), -1))
        ious.append(box_agreement(maps["full"], maps["reduced"], DEFAULT_THRESHOLD))
    scores = {k: s.result() for k, s in scorers.items()}
    diffs, ious = np.concatenate(diffs), np.concatenate(ious)
    return {"images": len(meta.image_ids), "model_input_size": m.input_size,
            "MaxBoxAccV2_full": scores["full"]["MaxBoxAccV2"], "MaxBoxAccV2_reduced": scores["reduced"]["MaxBoxAccV2"],
            "GT_known_Loc_full": scores["full"]["GT_known_Loc"],
            "GT_known_Loc_reduced": scores["reduced"]["GT_known_Loc"],
            "maps_max_abs_diff": round(float(diffs.max()), 4),
            "maps_p99_abs_diff": round(float(np.percentile(diffs, 99)), 4),
            "box_iou_ge_099_fraction": round(float((ious >= 0.99).mean()), 4)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-sizes", default="8,32", help="comma-separated batch sizes of `cream localize`")
    parser.add_argument("--breakdown-images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="runs per figure; the best is kept")
    parser.add_argument("--large", type=int, default=500,
                        help="also time --reduced-decode on this many 1000x750 JPEGs (0: skip)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "cream-throughput-bench"))
    parser.add_argument("--parity-model", help="a trained fp32 export: score --reduced-decode against a full decode "
                        "with it on --parity-data (re-encoded as JPEG)")
    parser.add_argument("--parity-data", help="data root whose test images are >= 2x the model's input size")
    parser.add_argument("--folder", help="time this folder of photos (read in place, linked for the start-up run) "
                                         "instead of --images generated JPEGs")
    parser.add_argument("--models", help="PRECISION=ONNX,... exports to time (default: fp32 and int8 built here)")
    parser.add_argument("--engines", default="onnxruntime",
                        help="comma-separated `cream localize --engine` values (bf16 runs the fp32 export only)")
    parser.add_argument("--out", default=None, help="JSON result file (e.g. bench/results/throughput.json)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder = Path(args.folder) if args.folder else work / "images"
    if args.folder:
        paths = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    else:
        paths = make_images(folder, args.images)
    small = work / "images-16"
    small.mkdir(exist_ok=True)
    for p in paths[:STARTUP_IMAGES]:
        target = small / Path(p).name
        if not target.exists():
            target.symlink_to(Path(p).resolve())
    if args.models:
        models = dict(item.split("=", 1) for item in args.models.split(","))
    else:
        models = build_models(work, args.backbone, args.input_size, paths[:: max(1, len(paths) // 64)][:64])
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    runs = [(p, m, e) for p, m in models.items() for e in args.engines.split(",") if not (p == "int8" and "bf16" in e)]
    for precision, model, engine in runs:
        for batch in batch_sizes:
            e2e = end_to_end(str(folder), str(small), len(paths), model, work, batch, args.repeats, engine)
            rows.append({"precision": precision, "engine": engine, "batch_size": batch, **e2e,
                         "breakdown_ms_per_image": stage_breakdown(model, paths[:args.breakdown_images], batch,
                                                                   engine)})
            print(f"{precision} {engine} batch {batch}: {e2e['images_per_s']} img/s end to end, "
                  f"{e2e['images_per_s_net_of_startup']} img/s net of start-up "
                  f"({e2e['images_per_hour_net']:,} images/hour); stages (ms/img): "
                  + ", ".join(f"{k} {v}" for k, v in rows[-1]["breakdown_ms_per_image"].items()), flush=True)
    large = None
    if args.large:
        big = make_images(work / "images-1000x750", args.large, seed=1, size=(1000, 750))
        batch = max(batch_sizes)
        large = {"images": len(big), "image_size": [1000, 750], "precision": "int8", "batch_size": batch}
        for name, extra in (("full_decode", []), ("reduced_decode", ["--reduced-decode"])):
            seconds = min(time_cli(str(work / "images-1000x750"), models["int8"], work / "big.jsonl", batch, extra)
                          for _ in range(args.repeats))
            large[name] = {"seconds": round(seconds, 3), "images_per_s": round(len(big) / seconds, 2)}
        large["reduced_vs_full"] = round(large["full_decode"]["seconds"] / large["reduced_decode"]["seconds"], 3)
        large["parity_fp32_model"] = reduced_decode_parity(models["fp32"], big[:128], batch)
        print(f"1000x750 JPEGs, int8 batch {batch}: --reduced-decode {large['reduced_vs_full']}x a full decode; maps "
              f"vs full decode p99 {large['parity_fp32_model']['maps_p99_abs_diff']}, boxes at IoU >= 0.99 "
              f"{100 * large['parity_fp32_model']['box_iou_ge_099_fraction']:.1f}%", flush=True)
    if args.parity_model and args.parity_data:
        jpegs = jpeg_split(Path(args.parity_data), work / "parity-jpeg")
        large = dict(large or {}, parity_trained=dict(reduced_decode_accuracy(args.parity_model, jpegs),
                                                       model=args.parity_model, data=args.parity_data))
        p = large["parity_trained"]
        print(f"trained model on {p['images']} JPEGs: MaxBoxAccV2 full decode {p['MaxBoxAccV2_full']:.2f}, reduced "
              f"{p['MaxBoxAccV2_reduced']:.2f}; maps p99 {p['maps_p99_abs_diff']}", flush=True)
    best = {p: max((r for r in rows if r["precision"] == p and r["engine"] == "onnxruntime"),
                   key=lambda r: r["images_per_s_net_of_startup"]) for p in models}
    fastest = max(rows, key=lambda r: r["images_per_s_net_of_startup"])
    if set(models) != {"fp32", "int8"}:
        raise SystemExit("--models: expected fp32=... and int8=...")
    summary = {
        "int8_vs_fp32": round(best["int8"]["images_per_s_net_of_startup"]
                              / best["fp32"]["images_per_s_net_of_startup"], 3),
        "best_int8_img_s_net": best["int8"]["images_per_s_net_of_startup"],
        "best_fp32_img_s_net": best["fp32"]["images_per_s_net_of_startup"],
        "int8_vs_58_img_s_recorded_before": round(best["int8"]["images_per_s_net_of_startup"]
                                                  / TARGETS["fp32_img_s_before"], 2),
        "reach_278_img_s": best["int8"]["images_per_s_net_of_startup"] >= TARGETS["reach_img_s"],
        "fastest": {k: fastest[k] for k in ("precision", "engine", "batch_size", "images_per_s_net_of_startup")},
        "fastest_reaches_278_img_s": fastest["images_per_s_net_of_startup"] >= TARGETS["reach_img_s"],
    }
    print(f"int8 vs fp32 (best batch each, one run): {summary['int8_vs_fp32']}x; int8 "
          f"{summary['best_int8_img_s_net']} img/s = {summary['int8_vs_58_img_s_recorded_before']}x the 58 img/s "
          f"recorded before (another machine); 1M images/hour (278 img/s) "
          f"{'reached' if summary['reach_278_img_s'] else 'not reached'}")
    from cream_rt.runtime import OnnxPredictor

    manifests = {k: OnnxPredictor.load(v).manifest for k, v in models.items()}
    result = {"benchmark": "throughput", "images": len(paths), "folder": str(folder),
              "image_size": None if args.folder else [500, 375], "model": manifests["fp32"].backbone,
              "mode": manifests["fp32"].mode, "iterations": manifests["fp32"].iterations,
              "em_layer": manifests["fp32"].config.cream.em_layer, "input_size": manifests["fp32"].input_size,
              "models": models, "rows": rows, "summary": summary,
              "large_images": large,
              "machine": machine_info(),
              "command": command_line("throughput", argv)}
    if args.out:
        write_json(args.out, result, what="--out")
    return result


if __name__ == "__main__":
    main()
