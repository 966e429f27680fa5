"""`cream tune` end to end on a small synthetic set: the settings are chosen on val (the test split
need not exist), the chosen setting's val score is what `cream eval` gives on the tuned
checkpoint, the box threshold travels into the export's manifest and is `cream localize`'s
default, and bad requests get one line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from cli_helpers import assert_one_error, run  # noqa: E402


@pytest.fixture(scope="module")
def tuned(tiny, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tune")
    data = root / "data"
    shutil.copytree(tiny["data"], data)
    shutil.rmtree(data / "metadata" / "test")  # tune never reads the test split
    bad = data / "images" / (data / "metadata" / "val" / "image_ids.txt").read_text().split()[0]
    bad.write_bytes(bad.read_bytes()[:40])  # one unreadable val image: skipped, a miss
    out = root / "tuned.pt"
    result = run("tune", "--checkpoint", tiny["ckpt"], "--data", data, "--out", out, "--iterations", "1,2",
                 "--json", expect=0)
    return {"data": data, "out": out, "record": json.loads(result.stdout), "stderr": result.stderr, "root": root,
            "bad": bad}


def test_tune_chooses_on_val_and_eval_agrees(tuned):
    record = tuned["record"]
    names = {r["name"] for r in record["rows"]}
    assert len(names) == len(record["rows"]) >= 8 and record["name"] in names
    best, own = max(r["MaxBoxAccV2"] for r in record["rows"]), record["val_default"]["MaxBoxAccV2"]
    assert record["min_gain"] == pytest.approx(100 / 6)  # one image's worth on a 6-image val split
    assert record["val"]["MaxBoxAccV2"] == pytest.approx(best if best >= own + record["min_gain"] else own)
    assert record["unreadable_images"]["count"] == 1
    assert sum(line.startswith("cream: warning: tune") for line in tuned["stderr"].splitlines()) == 1
    out = json.loads(run("eval", "--checkpoint", tuned["out"], "--data", tuned["data"], "--split", "val", "--json",
                         expect=0).stdout)
    assert out["MaxBoxAccV2"] == pytest.approx(record["val"]["MaxBoxAccV2"])
    assert out["num_missing"] == 1 and out["MaxBoxAcc_threshold"] == pytest.approx(record["box_threshold"])
    payload = torch.load(tuned["out"], weights_only=True)
    config = payload["config"]
    assert config["box_threshold"] == record["box_threshold"] and config["tuned"]["name"] == record["name"]
    assert config["cream"]["em_layer"] == record["setting"]["em_layer"]
    assert config["cream"]["iterations"] == record["setting"]["iterations"]
    assert len(payload["training"]["tune"]["rows"]) == len(record["rows"])


def test_without_a_margin_the_best_val_setting_wins(tiny, tmp_path):
    out = tmp_path / "t.pt"
    record = json.loads(run("tune", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--out", out,
                            "--layers", "cam", "--iterations", "1,2", "--min-gain", "0", "--json", expect=0).stdout)
    assert record["min_gain"] == 0 and {r["setting"]["em_layer"] for r in record["rows"]} == {"cam"}
    assert record["val"]["MaxBoxAccV2"] == pytest.approx(max(r["MaxBoxAccV2"] for r in record["rows"]))


def test_tuned_threshold_is_the_export_and_localize_default(tuned):
    from cream_rt.runtime import Localizer

    onnx_path = tuned["root"] / "tuned.onnx"
    manifest = json.loads(run("export", "--checkpoint", tuned["out"], "--out", onnx_path, "--json", expect=0).stdout)
    assert manifest["box_threshold"] == tuned["record"]["box_threshold"]
    assert manifest["model"]["tuned"]["name"] == tuned["record"]["name"]
    assert manifest["model"]["cream"]["em_layer"] == tuned["record"]["setting"]["em_layer"]
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    with Localizer.load(onnx_path) as default, Localizer.load(onnx_path, threshold=manifest["box_threshold"]) as given:
        assert default.threshold == manifest["box_threshold"]
        assert default([image])[0].boxes == given([image])[0].boxes


def test_tune_refuses_bad_requests(tiny, tmp_path):
    out = tmp_path / "t.pt"
    assert_one_error(run("tune", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--out", out,
                         "--layers", "body.1"), "body.1", "not an EM layer")
    assert_one_error(run("tune", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--out", out,
                         "--val-split", "nowhere"), "nowhere")
    assert_one_error(run("tune", "--checkpoint", tmp_path / "missing.pt", "--data", tiny["data"], "--out", out),
                     "missing.pt")
    assert not out.exists()


def test_a_large_fit_split_is_sampled_evenly_over_classes():
    """Each class's first image before any class's second: 5, 2 and 1 images, 4 kept -> every
    class once and one second image, in split order; a split that fits is kept whole."""
    from cream_rt.metadata import SplitMetadata
    from cream_rt.train.tune import fit_sample

    labels = {f"a{k}": 0 for k in range(5)} | {"b0": 1, "b1": 1, "c0": 2}
    meta = SplitMetadata(root=None, image_ids=list(labels), class_labels=labels)
    kept = fit_sample(meta, 4)(meta.image_ids)
    assert len(kept) == 4 and {labels[i] for i in kept} == {0, 1, 2} and "c0" in kept
    assert kept == [i for i in meta.image_ids if i in kept]
    assert fit_sample(meta, 8) is None


def _metadata_subset(src, dst, ids: list[str]) -> None:
    """A wsolevaluation metadata split holding `ids` of the split at `src`."""
    dst.mkdir(parents=True)
    keep = set(ids)
    for f in src.iterdir():
        lines = [line for line in f.read_text().splitlines() if line.split(",")[0] in keep]
        (dst / f.name).write_text("\n".join(lines) + "\n")


def test_fitting_on_val_scores_it_two_fold(tiny, tmp_path):
    """`--fit-split val`: the model's own setting is scored on val two-fold, as the CLI computes it
    by hand here: embeddings fitted (`cream fit-embeddings`) on every other val photo, maps of the
    rest saved by `cream eval`, both halves' maps scored together by `cream eval --maps`."""
    data = tiny["data"]
    val = data / "metadata" / "val"
    ids = (val / "image_ids.txt").read_text().split()
    halves = [ids[0::2], ids[1::2]]
    maps = tmp_path / "maps"
    for k, (fit_ids, score_ids) in enumerate((halves, halves[::-1])):
        meta = tmp_path / f"meta{k}"
        _metadata_subset(val, meta / "train", fit_ids)
        _metadata_subset(val, meta / "scored", score_ids)
        ckpt = tmp_path / f"half{k}.pt"
        run("fit-embeddings", "--checkpoint", tiny["ckpt"], "--images", data / "images", "--metadata", meta,
            "--out", ckpt, expect=0)
        run("eval", "--checkpoint", ckpt, "--images", data / "images", "--metadata", meta, "--split", "scored",
            "--save-maps", tmp_path / f"maps{k}", expect=0)  # a metadata root, as fit-embeddings takes it
        shutil.copytree(tmp_path / f"maps{k}", maps, dirs_exist_ok=True)
    by_hand = json.loads(run("eval", "--maps", maps, "--data", data, "--split", "val", "--map-size", "64", "64",
                             "--json", expect=0).stdout)
    record = json.loads(run("tune", "--checkpoint", tiny["ckpt"], "--data", data, "--out", tmp_path / "t.pt",
                            "--fit-split", "val", "--layers", "cam", "--iterations", "1", "--json", expect=0).stdout)
    assert record["val_default"]["MaxBoxAccV2"] == pytest.approx(by_hand["MaxBoxAccV2"])
    fitted_on_all = json.loads(run("eval", "--checkpoint", record["checkpoint"], "--data", data, "--split", "val",
                                   "--json", expect=0).stdout)
    assert record["fit_images"] == len(ids)  # the chosen embeddings: fitted on the whole of val
    assert fitted_on_all["num_images"] == len(ids)
