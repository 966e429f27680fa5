"""Bad inputs against every command that takes them: exit status 2 and exactly one
`cream: error:` line, no traceback, no hang, no output file left behind or half written.
`cream localize` instead reports a bad image as that image's record (exit status 1) and
localizes the rest. The corpus is generated here.

The case matrix runs `cream_rt.cli.main` in the test process (an uncaught exception fails the
test just as a traceback would, and torch is imported once); what needs a process of its own
(timeouts, signals, another user, the environment at import, stderr written by C libraries)
runs `python -m cream_rt.cli` in a subprocess with a timeout."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import CLI, ENV, TIMEOUT, assert_one_error, no_leftovers, run, run_process, unprivileged  # noqa: F401

# ---------------------------------------------------------------- the corpus ---------------------

def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG whose header claims `width x height` (its data is one pixel)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0\0\0\0")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("masks"))
    return dst


def _edit(path: Path, fn) -> None:
    path.write_text(fn(path.read_text()))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A tiny trained model, its export, a data set, and the bad inputs built from them."""
    import cv2
    import onnx
    import torch

    root = tmp_path_factory.mktemp("bad")
    os.chmod(root, 0o777)  # the unprivileged-user cases read and write here
    data = root / "data"
    run("synth", "--out", data, "--train", "48", "--val", "12", "--test", "12", "--size", "64", "--classes", "3",
        expect=0)
    ckpt, model = root / "m.pt", root / "m.onnx"
    run("train", "--data", data, "--out", ckpt, "--epochs", "1", "--batch-size", "16", "--bn-batches", "1",
        "--input-size", "64", expect=0)
    run("export", "--checkpoint", ckpt, "--out", model, expect=0)
    w = {"root": root, "data": data, "ckpt": ckpt, "model": model}

    img = root / "img"
    img.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(img / "good.png"), rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    cv2.imwrite(str(img / "good.jpg"), rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    png, jpg = (img / "good.png").read_bytes(), (img / "good.jpg").read_bytes()
    (img / "truncated.png").write_bytes(png[: len(png) // 2])
    (img / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    corrupt = bytearray(png)
    corrupt[60:62] = bytes(b ^ 0xFF for b in corrupt[60:62])  # inside the IDAT chunk
    (img / "crc_error.png").write_bytes(bytes(corrupt))
    (img / "garbage.jpg").write_bytes(b"this is not an image")
    (img / "empty.png").write_bytes(b"")
    (img / "huge_header.png").write_bytes(_png_header_only(100_000, 100_000))
    w["img"] = img

    d = root / "d"
    d.mkdir()
    ids = (data / "metadata" / "test" / "image_ids.txt").read_text().split()
    variants = {
        "empty_split": lambda p: (p / "metadata/test/image_ids.txt").write_text(""),
        "nan_box": lambda p: _edit(p / "metadata/test/localization.txt",
                                   lambda s: s.replace(s.splitlines()[0], f"{ids[0]},nan,1,5,5")),
        "huge_label": lambda p: _edit(p / "metadata/train/class_labels.txt",
                                      lambda s: s.replace(s.splitlines()[0], s.splitlines()[0].split(",")[0]
                                                          + ",99999999999999999999999")),
        "label_out_of_range": lambda p: _edit(p / "metadata/test/class_labels.txt",
                                              lambda s: s.replace(s.splitlines()[0], f"{ids[0]},7")),
        "conflicting_labels": lambda p: _edit(p / "metadata/test/class_labels.txt", lambda s: s + f"{ids[0]},2\n"),
        "binary_metadata": lambda p: (p / "metadata/test/class_labels.txt").write_bytes(b"\xff\xfe\x00garbage"),
        "missing_labels": lambda p: (p / "metadata/test/class_labels.txt").unlink(),
        "bad_test_image": lambda p: (p / "images" / ids[2]).write_bytes(png[: len(png) // 2]),
        "bad_train_image": lambda p: (p / "images" / (p / "metadata/train/image_ids.txt").read_text().split()[3])
        .write_bytes(b"garbage"),
    }
    for name, make in variants.items():
        make(_copy_data(data, d / name))
    w["d"] = d

    ck = root / "ck"
    ck.mkdir()
    payload = torch.load(ckpt, weights_only=True)
    raw = ckpt.read_bytes()
    (ck / "truncated.pt").write_bytes(raw[: len(raw) // 3])
    (ck / "random.pt").write_bytes(rng.integers(0, 255, 4096, dtype=np.uint8).tobytes())
    torch.save({**payload, "training": [1, 2]}, ck / "training_list.pt")
    torch.save({**payload, "training": {"epoch": "one"}}, ck / "bad_epoch.pt")
    torch.save({k: v for k, v in payload.items() if k != "training"}, ck / "no_training.pt")
    torch.save({**payload, "version": 99}, ck / "future.pt")
    torch.save({**payload, "config": {**payload["config"], "num_classes": 5}}, ck / "wrong_shape.pt")
    with open(ck / "pickle.pt", "wb") as handle:  # an arbitrary object: weights_only must refuse it
        pickle.dump({"format": "cream_rt.checkpoint", "evil": Path("/")}, handle)
    w["ck"] = ck

    mf = root / "mf"
    mf.mkdir()

    def manifest_variant(name: str, change) -> None:
        proto = onnx.load(str(model))
        for prop in proto.metadata_props:
            if prop.key == "cream_rt.manifest":
                manifest = json.loads(prop.value)
                change(manifest)
                prop.value = json.dumps(manifest)
        onnx.save(proto, str(mf / name))

    manifest_variant("std_zero.onnx", lambda m: m.update(std=[0, 0, 0]))
    manifest_variant("few_names.onnx", lambda m: m.update(class_names=m["class_names"][:2]))
    manifest_variant("future.onnx", lambda m: m.update(version=9))
    manifest_variant("nan_mean.onnx", lambda m: m.update(mean=[float("nan"), 0, 0]))
    manifest_variant("bad_mode.onnx", lambda m: m.update(mode="gradcam"))
    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    onnx.save(proto, str(mf / "no_manifest.onnx"))
    onnx_bytes = model.read_bytes()
    (mf / "truncated.onnx").write_bytes(onnx_bytes[:2000])

    maps = root / "maps"
    (maps / "test" / "class00").mkdir(parents=True)
    np.save(maps / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    w["mf"], w["maps"] = mf, maps
    return w


# ---------------------------------------------------------------- numbers (argparse types) --------

NUMBER_CASES = [
    ("localize", ["IMG", "--model", "MODEL", "--out", "OUT", "--batch-size", "0"], "--batch-size"),
    ("localize", ["IMG", "--model", "MODEL", "--out", "OUT", "--batch-size", "-1"], "--batch-size"),
    ("localize", ["IMG", "--model", "MODEL", "--out", "OUT", "--threshold", "5"], "threshold"),
    ("localize", ["IMG", "--model", "MODEL", "--out", "OUT", "--threshold", "nan"], "threshold"),
    ("eval", ["--checkpoint", "CKPT", "--data", "DATA", "--interval", "0"], "--interval"),
    ("eval", ["--checkpoint", "CKPT", "--data", "DATA", "--interval", "2"], "--interval"),
    ("eval", ["--checkpoint", "CKPT", "--data", "DATA", "--interval", "nan"], "--interval"),
    ("eval", ["--checkpoint", "CKPT", "--data", "DATA", "--interval", "1e-9"], "--interval"),
    ("eval", ["--checkpoint", "CKPT", "--data", "DATA", "--iterations", "-1"], "--iterations"),
    ("eval", ["--checkpoint", "CKPT", "--data", "DATA", "--iterations", "100000"], "--iterations"),
    ("eval", ["--maps", "MAPS", "--data", "DATA", "--map-size", "0", "0"], "--map-size"),
    ("train", ["--data", "DATA", "--out", "OUT", "--epochs", "0"], "--epochs"),
    ("train", ["--data", "DATA", "--out", "OUT", "--epochs", "-1"], "--epochs"),
    ("train", ["--data", "DATA", "--out", "OUT", "--lr", "nan"], "--lr"),
    ("train", ["--data", "DATA", "--out", "OUT", "--momentum", "2"], "--momentum"),
    ("train", ["--data", "DATA", "--out", "OUT", "--momentum", "nan"], "--momentum"),
    ("train", ["--data", "DATA", "--out", "OUT", "--input-size", "0"], "--input-size"),
    ("train", ["--data", "DATA", "--out", "OUT", "--batch-size", "0"], "--batch-size"),
    ("train", ["--data", "DATA", "--out", "OUT", "--tau", "1.5"], "--tau"),
    ("fit-embeddings", ["--checkpoint", "CKPT", "--data", "DATA", "--out", "OUT", "--momentum", "-0.1"],
     "--momentum"),
    ("export", ["--checkpoint", "CKPT", "--out", "OUT", "--opset", "99"], "--opset"),
    ("export", ["--checkpoint", "CKPT", "--out", "OUT", "--iterations", "100000"], "--iterations"),
    ("export", ["--checkpoint", "CKPT", "--out", "OUT", "--batch-profile", "1,x,3"], "--batch-profile"),
    ("parity", ["--checkpoint", "CKPT", "--model", "MODEL", "--data", "DATA", "--limit", "0"], "--limit"),
    ("bench", ["--backbone", "small-cnn", "--threads", "-1"], "--threads"),
    ("bench", ["--backbone", "small-cnn", "--budget", "-1"], "--budget"),
    ("bench", ["--backbone", "small-cnn", "--batch-sizes", "0"], "--batch-sizes"),
    ("synth", ["--out", "OUT", "--train", "-1"], "--train"),
    ("synth", ["--out", "OUT", "--body-tint", "nan"], "--body-tint"),
    ("synth", ["--out", "OUT", "--classes", "1000"], "--classes"),
    ("demo", ["--out", "OUT", "--epochs", "0"], "--epochs"),
]


def _fill(world: dict, argv: list[str], out: Path) -> list[str]:
    names = {"IMG": world["img"] / "good.png", "MODEL": world["model"], "CKPT": world["ckpt"],
             "DATA": world["data"], "MAPS": world["maps"], "OUT": out}
    return [str(names.get(a, a)) for a in argv]


@pytest.mark.parametrize("command,argv,flag", NUMBER_CASES, ids=[f"{c}{a[-2]}={a[-1]}" for c, a, _ in NUMBER_CASES])
def test_bad_numbers_are_one_line(world, tmp_path, command, argv, flag):
    out = tmp_path / "out"
    assert_one_error(run(command, *_fill(world, argv, out)), flag)
    assert not out.exists()


# ---------------------------------------------------------------- outputs -------------------------

def _writers(world: dict, out: str) -> dict[str, list[str]]:
    w = world
    return {
        "localize": ["localize", w["img"] / "good.png", "--model", w["model"], "--out", out],
        "localize-maps": ["localize", w["img"] / "good.png", "--model", w["model"], "--out", w["root"] / "x.jsonl",
                          "--save-maps", out],
        "localize-overlays": ["localize", w["img"] / "good.png", "--model", w["model"],
                              "--out", w["root"] / "x.jsonl", "--overlays", out],
        "export": ["export", "--checkpoint", w["ckpt"], "--out", out],
        "train": ["train", "--data", w["data"], "--out", out, "--epochs", "1"],
        "fit-embeddings": ["fit-embeddings", "--checkpoint", w["ckpt"], "--data", w["data"], "--out", out],
        "parity": ["parity", "--checkpoint", w["ckpt"], "--model", w["model"], "--data", w["data"], "--results", out],
        "bench": ["bench", "--backbone", "small-cnn", "--budget", "0.05", "--batch-sizes", "1", "--json-out", out],
        "bench-plot": ["bench", "--backbone", "small-cnn", "--budget", "0.05", "--batch-sizes", "1", "--plot", out],
        "eval-maps": ["eval", "--checkpoint", w["ckpt"], "--data", w["data"], "--save-maps", out],
        "synth": ["synth", "--out", out, "--train", "3", "--val", "3", "--test", "3"],
        "demo": ["demo", "--out", out, "--train", "16", "--epochs", "1"],
        "import": ["import", w["ckpt"], "--from", "wsolevaluation", "--arch", "vgg16", "--out", out],
        "train-regressor": ["train-regressor", "--checkpoint", w["ckpt"], "--data", w["data"], "--out", out],
    }


FOLDER_OUTPUTS = {"localize-maps", "localize-overlays", "eval-maps", "synth", "demo"}
WRITERS = list(_writers({"img": Path(), "model": "", "ckpt": "", "data": "", "root": Path()}, ""))


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("where", ["is-a-folder", "under-a-file", "unwritable"])
def test_unwritable_output_is_one_line_before_any_work(world, tmp_path, writer, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    if where == "is-a-folder":
        if writer in FOLDER_OUTPUTS:
            out, word = blocker, "is a file"  # a folder output that is a file
        else:
            out, word = tmp_path, "is a folder"
    elif where == "under-a-file":
        out, word = blocker / "sub" / "out.x", "a_file is a file"
    else:
        out, word = "/proc/cream_rt_cannot_write_here/out.x", "cannot"
    started = time.time()
    assert_one_error(run(*_writers(world, str(out))[writer]), word)
    assert blocker.read_text() == "keep"
    no_leftovers(tmp_path)
    if writer in ("train", "bench", "bench-plot", "demo", "train-regressor"):
        assert time.time() - started < 60  # refused before training or timing


def test_read_only_folder_asunprivileged_user(world):
    if os.geteuid() == 0:  # root writes anywhere: run these as `nobody` if its interpreter is reachable
        try:
            subprocess.run([sys.executable, "-c", "pass"], preexec_fn=unprivileged, check=True, timeout=60)
        except (OSError, subprocess.CalledProcessError):
            pytest.skip(f"running as root and {sys.executable} is not usable by an unprivileged user")
    folder = world["root"] / "read_only"
    folder.mkdir()
    os.chmod(folder, 0o555)
    unreadable = world["root"] / "unreadable.png"
    shutil.copy(world["img"] / "good.png", unreadable)
    os.chmod(unreadable, 0o000)
    good = world["img"] / "good.png"
    os.chmod(world["img"], 0o755)
    result = run_process("localize", good, "--model", world["model"], "--out", folder / "r.jsonl", user=True)
    assert_one_error(result, "cannot write", "read_only")
    result = run_process("localize", good, "--model", world["model"], "--out", world["root"] / "u.jsonl",
                         "--overlays", folder / "ov", user=True)
    assert_one_error(result, "--overlays")
    out = world["root"] / "unreadable.jsonl"
    result = run_process("localize", unreadable, good, "--model", world["model"], "--out", out, user=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert "error" in records[0] and "class_id" in records[1]


def test_symlink_is_written_through_and_device_accepted(world, tmp_path):
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    run("localize", world["img"] / "good.png", "--model", world["model"], "--out", link, expect=0)
    assert link.is_symlink() and json.loads(real.read_text())["class_id"] >= 0
    run("localize", world["img"] / "good.png", "--model", world["model"], "--out", "/dev/null", expect=0)
    assert Path("/dev/null").is_char_device()
    no_leftovers(tmp_path)


# ---------------------------------------------------------------- images -------------------------

BAD_IMAGES = ["truncated.png", "crc_error.png", "truncated.jpg", "garbage.jpg", "empty.png", "huge_header.png"]


def test_localize_reports_each_bad_image_and_keeps_the_rest(world, tmp_path):
    img = world["img"]
    inputs = [img / "good.png", *(img / n for n in BAD_IMAGES), img / "good.jpg"]
    out = tmp_path / "r.jsonl"
    result = run_process("localize", *inputs, "--model", world["model"], "--out", out, "--batch-size", "3",
                         "--save-maps", tmp_path / "maps")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "libpng" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cream: error:")]
    assert len(errors) == len(BAD_IMAGES)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in records] == [str(p) for p in inputs]
    assert [("error" in r) for r in records] == [False] + [True] * len(BAD_IMAGES) + [False]
    by_name = {Path(r["image"]).name: r.get("error", "") for r in records}
    assert "truncated PNG" in by_name["truncated.png"] and "truncated JPEG" in by_name["truncated.jpg"]
    assert "CRC error" in by_name["crc_error.png"]
    assert "pixels" in by_name["huge_header.png"]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["good.jpg.npy", "good.png.npy"]


def test_localize_refuses_a_missing_input_argument(world, tmp_path):
    """A path on the command line that does not exist is a bad argument: one line, exit 2, no
    results file (a missing image named inside a list of paths is that image's error record)."""
    out = tmp_path / "r.jsonl"
    for missing in (tmp_path / "nosuchdir", world["img"] / "missing.png"):
        result = run("localize", world["img"] / "good.png", missing, "--model", world["model"], "--out", out)
        assert_one_error(result, str(missing))
        assert not out.exists()
    listing = tmp_path / "list.txt"
    listing.write_text(f"{world['img'] / 'good.png'}\n{world['img'] / 'missing.png'}\n")
    run("localize", listing, "--model", world["model"], "--out", out, expect=1)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert "error" not in records[0] and "not found" in records[1]["error"]


def test_same_file_names_in_different_folders_keep_their_outputs(world, tmp_path):
    for folder in ("a/x", "b/x"):
        (tmp_path / folder).mkdir(parents=True)
        shutil.copy(world["img"] / "good.png", tmp_path / folder / "img.png")
    shutil.copy(world["img"] / "good.jpg", tmp_path / "a" / "x" / "img.jpg")
    run("localize", tmp_path / "a", tmp_path / "b", "--model", world["model"], "--out", tmp_path / "r.jsonl",
        "--save-maps", tmp_path / "maps", "--overlays", tmp_path / "ov", expect=0)
    maps = sorted(str(p.relative_to(tmp_path / "maps")) for p in (tmp_path / "maps").rglob("*.npy"))
    assert maps == ["a/x/img.jpg.npy", "a/x/img.png.npy", "b/x/img.npy"]
    assert len(list((tmp_path / "ov").rglob("*.png"))) == 3


def test_eval_save_maps_leaves_no_partial_folder(world, tmp_path):
    out = tmp_path / "maps"
    assert_one_error(run("eval", "--model", world["model"], "--data", world["d"] / "bad_test_image",
                         "--save-maps", out, "--max-bad-images", "0"), "truncated PNG")
    assert not out.exists()
    no_leftovers(tmp_path)


# ---------------------------------------------------------------- metadata and data --------------

DATA_CASES = [
    ("empty_split", "eval", "lists no images"),
    ("nan_box", "eval", "finite"),
    ("label_out_of_range", "eval", "out of range"),
    ("label_out_of_range", "eval-model", "out of range"),
    ("label_out_of_range", "parity", "out of range"),
    ("conflicting_labels", "eval", "labelled twice"),
    ("binary_metadata", "eval", "UTF-8"),
    ("missing_labels", "eval", "not found"),
    ("bad_test_image", "eval", "truncated PNG"),
    ("bad_test_image", "parity", "truncated PNG"),
    ("huge_label", "train", "class label must lie"),
    ("bad_train_image", "train", "not a decodable image"),
    ("bad_train_image", "train-workers", "not a decodable image"),
    ("bad_train_image", "fit-embeddings", "not a decodable image"),
]


@pytest.mark.parametrize("variant,command,words", DATA_CASES, ids=[f"{v}-{c}" for v, c, _ in DATA_CASES])
def test_bad_data_is_one_line(world, tmp_path, variant, command, words):
    data, out = world["d"] / variant, tmp_path / "out.pt"
    argv = {
        "eval": ["eval", "--checkpoint", world["ckpt"], "--data", data],
        "eval-model": ["eval", "--model", world["model"], "--data", data],
        "parity": ["parity", "--checkpoint", world["ckpt"], "--model", world["model"], "--data", data],
        "train": ["train", "--data", data, "--out", out, "--epochs", "1"],
        "train-workers": ["train", "--data", data, "--out", out, "--epochs", "1", "--workers", "1"],
        "fit-embeddings": ["fit-embeddings", "--checkpoint", world["ckpt"], "--data", data, "--out", out],
    }[command]
    if variant.startswith("bad_") and command != "parity":  # skipped and reported unless the limit is 0
        argv += ["--max-bad-images", "0"]
    assert_one_error((run_process if command == "train-workers" else run)(*argv), words)
    assert not out.exists()


def test_an_unreadable_training_image_is_skipped_in_workers_too(world, tmp_path):
    """Under the default --max-bad-images the run goes on: the DataLoader workers hand the
    unreadable image back, the record names it, one warning line on stderr."""
    out = tmp_path / "out.pt"
    result = run_process("train", "--data", world["d"] / "bad_train_image", "--out", out, "--epochs", "1",
                         "--workers", "1", "--json", expect=0)
    record = json.loads(result.stdout)
    assert record["unreadable_images"]["count"] == 1 and out.is_file()
    warnings = [line for line in result.stderr.splitlines() if line.startswith("cream: warning:")]
    assert len(warnings) == 1 and "unreadable" in warnings[0]


def test_real_processes_match_the_in_process_matrix(world, tmp_path):
    """One case of each kind again as a user runs it: exit status and stderr of a real process."""
    out = tmp_path / "out"
    assert_one_error(run_process("eval", "--checkpoint", world["ckpt"], "--data", world["data"], "--interval", "0"),
                     "--interval")
    assert_one_error(run_process("export", "--checkpoint", world["ckpt"], "--out", tmp_path), "is a folder")
    assert_one_error(run_process("export", "--checkpoint", world["ck"] / "pickle.pt", "--out", out),
                     "not a readable cream checkpoint")
    assert_one_error(run_process("localize", world["img"] / "good.png", "--model", world["mf"] / "std_zero.onnx",
                                 "--out", out), "std must be")
    assert_one_error(run_process("eval", "--checkpoint", world["ckpt"], "--data", world["d"] / "nan_box"), "finite")
    assert not out.exists()


# ---------------------------------------------------------------- checkpoints and exports --------

CHECKPOINT_CASES = [
    ("truncated.pt", "not a readable cream checkpoint"),
    ("random.pt", "not a readable cream checkpoint"),
    ("pickle.pt", "not a readable cream checkpoint"),
    ("training_list.pt", "'training' must be a dict"),
    ("future.pt", "version 99"),
    ("wrong_shape.pt", "does not match"),
    ("missing.pt", "not found"),
]


@pytest.mark.parametrize("name,words", CHECKPOINT_CASES, ids=[c for c, _ in CHECKPOINT_CASES])
@pytest.mark.parametrize("command", ["eval", "export", "fit-embeddings", "resume"])
def test_bad_checkpoint_is_one_line(world, tmp_path, name, words, command):
    ckpt, data, out = world["ck"] / name, world["data"], tmp_path / "out"
    argv = {"eval": ["eval", "--checkpoint", ckpt, "--data", data],
            "export": ["export", "--checkpoint", ckpt, "--out", out],
            "fit-embeddings": ["fit-embeddings", "--checkpoint", ckpt, "--data", data, "--out", out],
            "resume": ["train", "--data", data, "--resume", ckpt, "--out", out, "--epochs", "2"]}[command]
    assert_one_error(run(*argv), words)
    assert not out.exists()


def test_resume_needs_a_training_record(world, tmp_path):
    for name, words in (("bad_epoch.pt", "no epoch count"), ("no_training.pt", "no epoch count")):
        assert_one_error(run("train", "--data", world["data"], "--resume", world["ck"] / name,
                             "--out", tmp_path / "o.pt", "--epochs", "2"), words)
    # a checkpoint without a training record (e.g. imported) still gets embeddings fitted
    run("fit-embeddings", "--checkpoint", world["ck"] / "no_training.pt", "--data", world["data"],
        "--out", tmp_path / "f.pt", expect=0)


MODEL_CASES = [
    ("std_zero.onnx", "std must be 3 finite positive"),
    ("nan_mean.onnx", "mean must be 3 finite"),
    ("few_names.onnx", "names 2 classes but the graph outputs 3"),
    ("future.onnx", "manifest version 9"),
    ("bad_mode.onnx", "mode must be"),
    ("no_manifest.onnx", "no cream_rt manifest"),
    ("truncated.onnx", "not a loadable ONNX model"),
    ("missing.onnx", "not found"),
]


@pytest.mark.parametrize("name,words", MODEL_CASES, ids=[c for c, _ in MODEL_CASES])
@pytest.mark.parametrize("command", ["localize", "eval", "parity"])
def test_bad_export_is_one_line(world, tmp_path, name, words, command):
    model, out = world["mf"] / name, tmp_path / "out.jsonl"
    argv = {"localize": ["localize", world["img"] / "good.png", "--model", model, "--out", out],
            "eval": ["eval", "--model", model, "--data", world["data"]],
            "parity": ["parity", "--checkpoint", world["ckpt"], "--model", model, "--data", world["data"]]}[command]
    assert_one_error(run(*argv), words)
    assert not out.exists()


def test_other_bad_values_are_one_line(world, tmp_path):
    out = tmp_path / "o.jsonl"
    good = world["img"] / "good.png"
    assert_one_error(run("eval", "--checkpoint", world["ckpt"], "--data", world["data"], "--device", "cuda:7"),
                     "--device cuda:7")
    assert_one_error(run("eval", "--checkpoint", world["ckpt"], "--data", world["data"], "--device", "tpu"),
                     "--device")
    assert_one_error(run("localize", good, "--model", world["model"], "--out", out, "--providers", "NoSuchEP"),
                     "NoSuchEP")
    assert_one_error(run("localize", good, "--model", world["model"], "--out", out,
                         "--threshold", world["data"] / "metadata/test/image_ids.txt"), "MaxBoxAcc_threshold")
    assert_one_error(run("eval", "--maps", world["maps"], "--data", world["data"]))
    assert_one_error(run("synth", "--out", tmp_path / "s", "--preset", "nope"), "preset")
    assert not out.exists() and not (tmp_path / "s").exists()


def test_npy_maps_are_never_unpickled(world, tmp_path):
    maps = tmp_path / "maps"
    meta = world["data"] / "metadata" / "test"
    first = (meta / "image_ids.txt").read_text().split()[0]
    (maps / first).parent.mkdir(parents=True)
    np.save(maps / f"{first}.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert_one_error(run("eval", "--maps", maps, "--metadata", meta, "--allow-missing"), first)


# ---------------------------------------------------------------- signals -------------------------

@pytest.mark.parametrize("sig,status,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_during_localize_stops_cleanly(world, tmp_path, sig, status, word):
    listing = tmp_path / "many.txt"
    listing.write_text(f"{world['img'] / 'good.png'}\n" * 200_000)
    out, maps = tmp_path / "r.jsonl", tmp_path / "maps"
    out.write_text("previous\n")
    proc = subprocess.Popen(CLI + ["localize", str(listing), "--model", str(world["model"]), "--out", str(out),
                                   "--save-maps", str(maps)], stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(4)
    assert proc.poll() is None, "finished before the signal: make the input longer"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err[-2000:]
    assert word in err and "Traceback" not in err and "terminate called" not in err
    assert out.read_text() == "previous\n" and not maps.exists()
    no_leftovers(tmp_path)


# ---------------------------------------------------------------- environment and Python API -----

def test_no_writable_numba_cache_falls_back(tmp_path):
    env = {**ENV, "NUMBA_CACHE_LOCATOR_CLASSES": "UserProvidedCacheLocator",
           "NUMBA_CACHE_DIR": "/proc/cream_rt_no_cache_here", "HOME": "/proc/cream_rt_no_home"}
    code = ("import numpy as np; from cream_rt.metrics import BoxEvaluator; e = BoxEvaluator(0.1, (8, 8)); "
            "m = np.zeros((8, 8)); m[2:5, 2:5] = 1; e.add(m, [(2, 2, 4, 4)]); print(e.result()['MaxBoxAccV2'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    cached = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
    assert result.stdout == cached.stdout and float(result.stdout) > 0


def test_localizer_api_rejects_bad_values(world):
    from cream_rt.errors import CreamError
    from cream_rt.runtime import Localizer

    image = np.zeros((40, 50, 3), np.uint8)
    with Localizer.load(world["model"]) as localizer:
        for bad_call, words in [
            (lambda: localizer([np.zeros((0, 0, 3), np.uint8)]), "empty"),
            (lambda: localizer([image], [2 ** 70]), "out of range"),
            (lambda: localizer([image], [1.7]), "not an integer"),
            (lambda: localizer([image], [3]), "out of range"),
            (lambda: localizer([image, image], [0]), "expected 2 ids"),
            (lambda: localizer([str(world["img"] / "huge_header.png")]), "pixels"),
            (lambda: localizer([image.astype(np.float32)]), "uint8"),
        ]:
            with pytest.raises(CreamError, match=words):
                bad_call()
        assert localizer(image, [np.int64(2)])[0].class_id == 2  # one array is one image
    with pytest.raises(CreamError, match="closed"):
        localizer([image])


def test_decode_ahead_hands_thread_failures_to_the_consumer():
    from cream_rt.runtime import decode_ahead

    class Exploding:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(decode_ahead([np.zeros((4, 4, 3), np.uint8), Exploding()], 1))
    stream = decode_ahead([np.zeros((4, 4, 3), np.uint8)] * 50, 1, depth=1)
    next(stream)
    stream.close()  # the producer thread stops and is joined
    import threading

    assert not any(t.name == "cream-decode-ahead" for t in threading.enumerate())


def test_training_inputs_are_checked_before_training(world, tmp_path):
    out = tmp_path / "t.pt"
    data = world["data"]
    weights = tmp_path / "other.pth"
    import torch

    torch.save({"not.a.resnet.key": torch.zeros(3)}, weights)
    cases = [
        (["--backbone", "resnet50", "--pretrained", world["img"] / "good.png"], "not a readable weights file"),
        (["--backbone", "resnet50", "--pretrained", weights], "no tensor matches"),
        (["--backbone", "resnet50", "--pretrained", tmp_path / "none.pth"], "not found"),
        (["--backbone", "no-such-net"], "unknown backbone"),
        (["--resume", world["ckpt"], "--epochs", "1"], "already trained 1 epochs"),
        (["--images", tmp_path / "no_images", "--metadata", data / "metadata"], "and 47 more of 48"),
    ]
    for extra, words in cases:
        argv = ["train", "--out", out, "--epochs", "2", *extra]
        if "--images" not in extra:
            argv += ["--data", data]
        assert_one_error(run(*argv), words)
        assert not out.exists()


def test_outputs_get_the_mode_a_plain_write_would(world, tmp_path):
    """Atomic writes go through mkstemp/mkdtemp (0600/0700); the results must still be readable
    by others as a plain open() would leave them: 0666/0777 less the umask, or the replaced
    file's own mode."""
    from cream_rt.atomic import atomic_dir, process_umask, write_json

    umask = process_umask()
    write_json(tmp_path / "new.json", {"a": 1})
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o666 & ~umask
    (tmp_path / "kept.json").write_text("{}")
    os.chmod(tmp_path / "kept.json", 0o640)
    write_json(tmp_path / "kept.json", {"a": 2})
    assert (tmp_path / "kept.json").stat().st_mode & 0o777 == 0o640
    with atomic_dir(tmp_path / "maps") as staging:
        (staging / "x.npy").write_bytes(b"")
    assert (tmp_path / "maps").stat().st_mode & 0o777 == 0o777 & ~umask
    run("export", "--checkpoint", world["ckpt"], "--triton-repo", tmp_path / "repo", "--model-name", "m", expect=0)
    assert (tmp_path / "repo" / "m").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "repo" / "m" / "config.pbtxt").stat().st_mode & 0o777 == 0o666 & ~umask
