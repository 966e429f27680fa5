"""Export to ONNX, the torch-free runtime, `cream localize`, `cream parity` and bad model files.
The eager PyTorch model is the reference for the exported graph."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from cream_rt.cli import main  # noqa: E402
from cream_rt.export.onnx_export import export_model  # noqa: E402
from cream_rt.model.network import CamModel, create_model  # noqa: E402
from cream_rt.runtime import Localizer, OnnxPredictor  # noqa: E402


def _model(backbone: str, size: int, classes: int = 5) -> CamModel:
    torch.manual_seed(0)
    model = create_model(backbone, classes, input_size=size).eval()
    model.embeddings.copy_(torch.rand_like(model.embeddings))  # non-negative, like learned ones
    return model


def _compare(model: CamModel, path, batch_sizes=(1, 3)):
    predictor = OnnxPredictor.load(path)
    size = model.config.input_size
    rng = np.random.default_rng(0)
    for b in batch_sizes:
        x = rng.normal(0, 1, (b, 3, size, size)).astype(np.float32)
        ids = np.array([-1, 2, 0, 1, -1, 4, 3, -1][:b], np.int64)
        logits, maps = predictor(x, ids)
        with torch.no_grad():
            le, me, used = model(torch.from_numpy(x), torch.from_numpy(ids))
        assert maps.shape == (b, size, size) and maps.min() >= 0 and maps.max() <= 1
        np.testing.assert_allclose(logits, le.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(maps, me.numpy(), atol=1e-4)
        out_ids = predictor.session.run(["class_ids_used"], {"images": x, "class_ids": ids})[0]
        assert out_ids.tolist() == used.tolist()
        assert all(out_ids[ids >= 0] == ids[ids >= 0]) and all(out_ids[ids < 0] == le.numpy()[ids < 0].argmax(1))


@pytest.mark.parametrize("backbone,size", [("small-cnn", 64), ("efficientnet-lite0", 64), ("vgg16", 64),
                                           ("resnet50", 64), ("inceptionv3", 96)])
def test_export_every_backbone_matches_eager(backbone, size, tmp_path):
    model = _model(backbone, size)
    export_model(model, tmp_path / "m.onnx")
    proto = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(proto, full_check=True)
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)  # standard operators only
    _compare(model, tmp_path / "m.onnx")


@pytest.mark.parametrize("mode,iterations", [("cam", 0), ("cream", 1), ("cream", 3)])
def test_modes_and_dynamic_batch(mode, iterations, tmp_path):
    model = _model("small-cnn", 48)
    manifest = export_model(model, tmp_path / "m.onnx", mode, iterations)
    assert manifest.mode == mode and manifest.iterations == iterations
    predictor = OnnxPredictor.load(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    for b in (1, 3, 8):
        x = rng.normal(0, 1, (b, 3, 48, 48)).astype(np.float32)
        logits, maps = predictor(x)  # no class ids: predicted top-1
        with torch.no_grad():
            le, me, _ = model(torch.from_numpy(x), None, mode, iterations)
        np.testing.assert_allclose(maps, me.numpy(), atol=1e-4)


def test_runtime_rejects_bad_inputs_and_files(tmp_path):
    model = _model("small-cnn", 48, classes=3)
    export_model(model, tmp_path / "m.onnx")
    predictor = OnnxPredictor.load(tmp_path / "m.onnx")
    from cream_rt.errors import CreamError, ModelFileError

    with pytest.raises(CreamError, match="class id 3 is out of range"):
        predictor(np.zeros((1, 3, 48, 48), np.float32), np.array([3]))
    with pytest.raises(CreamError, match=r"images must have shape \(B, 3, 48, 48\)"):
        predictor(np.zeros((1, 3, 32, 32), np.float32))
    (tmp_path / "garbage.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        OnnxPredictor.load(tmp_path / "garbage.onnx")
    with pytest.raises(ModelFileError, match="model file not found"):
        OnnxPredictor.load(tmp_path / "missing.onnx")
    proto = onnx.load(tmp_path / "m.onnx")
    entry = proto.metadata_props[0]
    entry.value = entry.value.replace('"version": 2', '"version": 99')
    onnx.save(proto, tmp_path / "future.onnx")
    with pytest.raises(ModelFileError, match="manifest version 99 is not supported"):
        OnnxPredictor.load(tmp_path / "future.onnx")
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "plain.onnx")
    with pytest.raises(ModelFileError, match="no cream_rt manifest"):
        OnnxPredictor.load(tmp_path / "plain.onnx")


def test_localizer_boxes_in_original_coordinates(tmp_path):
    model = _model("small-cnn", 48, classes=3)
    export_model(model, tmp_path / "m.onnx")
    localizer = Localizer.load(tmp_path / "m.onnx")
    # its idle intra-op threads sleep between batches, leaving the cores to decoding and boxes
    options = localizer.predictor.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((100, 200), (48, 48), (31, 77))]
    results = localizer(images, return_maps=True)
    for image, result in zip(images, results):
        h, w = image.shape[:2]
        assert result.image_size == (w, h) and 0 <= result.class_id < 3 and 0 < result.score <= 1
        for x0, y0, x1, y1 in result.boxes:
            assert 0 <= x0 <= x1 <= w - 1 and 0 <= y0 <= y1 <= h - 1
        assert result.map.shape == (48, 48)


def test_localizer_on_error_and_stream_keep_the_batch(tmp_path):
    """An unreadable image in a batch: on_error "raise" raises its error; "return" puts the error
    in its place and localizes the rest exactly as a batch without it does; `stream` yields the
    same per image, in order, across batches. Reference: the same images localized one at a time."""
    from cream_rt.errors import CreamError, ImageReadError

    model = _model("small-cnn", 48, classes=3)
    export_model(model, tmp_path / "m.onnx")
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (40 + 9 * i, 60, 3), dtype=np.uint8) for i in range(4)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    batch = [images[0], str(bad), images[1], images[2], tmp_path / "missing.jpg", images[3]]
    with Localizer.load(tmp_path / "m.onnx") as loc:
        with pytest.raises(ImageReadError, match="broken.png"):
            loc(batch)
        with pytest.raises(CreamError, match="on_error must be one of"):
            loc(batch, on_error="skip")
        alone = [loc([image])[0] for image in images]
        got = loc(batch, on_error="return")
        streamed = list(loc.stream(batch, batch_size=4))
    assert [type(r).__name__ for r in got] == ["Localization", "ImageReadError", "Localization", "Localization",
                                               "ImageReadError", "Localization"]
    assert "broken.png" in str(got[1]) and "missing.jpg" in str(got[4])
    kept = [r for r in got if not isinstance(r, Exception)]
    assert [(r.class_id, r.boxes) for r in kept] == [(r.class_id, r.boxes) for r in alone]
    np.testing.assert_allclose([r.score for r in kept], [r.score for r in alone], atol=1e-5)
    assert [str(item[0]) for item in streamed] == [str(b) for b in batch]
    assert [str(item[2]) if isinstance(item[2], Exception) else item[2].to_dict() for item in streamed] == \
        [str(r) if isinstance(r, Exception) else r.to_dict() for r in got]


def test_scale_boxes_hand_computed():
    from cream_rt.boxes import scale_boxes

    # a 48x48 map's full box covers the whole 200x100 image; pixel 0..23 covers x 0..99, y 0..49
    assert scale_boxes(np.array([[0, 0, 47, 47]]), 48, 200, 100) == [[0.0, 0.0, 199.0, 99.0]]
    assert scale_boxes(np.array([[0, 0, 23, 23]]), 48, 200, 100) == [[0.0, 0.0, 99.0, 49.0]]
    assert scale_boxes(np.array([[24, 24, 24, 24]]), 48, 96, 96) == [[48.0, 48.0, 49.0, 49.0]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = root / "synth"
    assert main(["synth", "--out", str(data), "--train", "64", "--val", "16", "--test", "24", "--classes", "3",
                 "--size", "64"]) == 0
    ckpt = root / "m.pt"
    assert main(["train", "--data", str(data), "--out", str(ckpt), "--epochs", "1", "--batch-size", "16",
                 "--input-size", "64"]) == 0
    onnx_path = root / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(onnx_path)]) == 0
    return data, ckpt, onnx_path


def test_parity_cli_meets_targets(trained, tmp_path, capsys):
    data, ckpt, onnx_path = trained
    results = tmp_path / "parity.json"
    assert main(["parity", "--checkpoint", str(ckpt), "--model", str(onnx_path), "--data", str(data),
                 "--json", "--results", str(results)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads(results.read_text())
    assert out["num_images"] == 24
    assert out["maps_max_abs_diff"] <= 1e-4 and out["top1_agreement"] == 1.0
    assert out["box_iou_ge_099_fraction"] >= 0.999 and out["MaxBoxAccV2_diff"] <= 0.05


def test_eval_model_equals_eval_checkpoint(trained, capsys):
    data, ckpt, onnx_path = trained
    assert main(["eval", "--model", str(onnx_path), "--data", str(data), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--json"]) == 0
    eager = json.loads(capsys.readouterr().out)
    assert abs(exported["MaxBoxAccV2"] - eager["MaxBoxAccV2"]) <= 0.05 and exported["num_images"] == 24


def test_localize_cli_reports_bad_images_and_writes_complete_output(trained, tmp_path):
    data, _, onnx_path = trained
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = sorted((data / "images" / "test").rglob("*.png"))[:5]
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "res.jsonl"
    proc = subprocess.run([sys.executable, "-m", "cream_rt.cli", "localize", str(folder), "--model", str(onnx_path),
                           "--out", str(out), "--batch-size", "4", "--overlays", str(tmp_path / "ov")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "broken.png: not a decodable image" in proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and sum("error" in r for r in records) == 1
    assert all(len(r["boxes"]) == 1 for r in records if "error" not in r)
    assert len(list((tmp_path / "ov").glob("*.png"))) == 5
    coco = tmp_path / "res.json"
    subprocess.run([sys.executable, "-m", "cream_rt.cli", "localize", *map(str, good), "--model", str(onnx_path),
                    "--out", str(coco), "--format", "coco"], check=True, capture_output=True)
    detections = json.loads(coco.read_text())
    assert len(detections["images"]) == 5 and len(detections["annotations"]) == 5
    # a missing model: one error line, no output file
    bad_out = tmp_path / "none.jsonl"
    proc = subprocess.run([sys.executable, "-m", "cream_rt.cli", "localize", str(folder), "--model",
                           str(tmp_path / "nope.onnx"), "--out", str(bad_out)], capture_output=True, text=True)
    assert proc.returncode == 2 and "model file not found" in proc.stderr and not bad_out.exists()


def test_localizer_load_does_not_import_torch(trained):
    _, _, onnx_path = trained
    code = ("import sys, numpy as np, cream_rt; loc = cream_rt.Localizer.load(sys.argv[1]); "
            "loc([np.zeros((30, 40, 3), np.uint8)]); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(onnx_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_demo_smoke(tmp_path, capsys):
    """The whole demo at toy size: every stage runs and the results file holds each table (with
    decoys and the L2-normalised feature mean, so that those paths run end to end too)."""
    assert main(["demo", "--out", str(tmp_path / "demo"), "--train", "64", "--epochs", "1", "--decoys", "1",
                 "--feature-mean", "unit", "--json"]) == 0
    printed = capsys.readouterr()
    summary = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert json.loads(printed.out) == summary  # --json: stdout is the summary alone
    assert "[7/7]" in printed.err
    assert set(summary["accuracy_test"]) == {"T=0", "T=1", "T=2", "T=3", "T=4"}
    assert summary["parity"]["maps_max_abs_diff"] <= 1e-4 and summary["parity"]["top1_agreement"] == 1.0
    assert {"eager/cream/b1", "onnxruntime/cream/b8", "eager/cam/b8"} <= set(summary["latency"])
    assert (tmp_path / "demo" / "overlays_cam_top_cream_bottom.png").stat().st_size > 1000


def test_export_has_no_dead_or_training_nodes(tmp_path):
    model = _model("small-cnn", 48)
    export_model(model, tmp_path / "m.onnx")
    graph = onnx.load(tmp_path / "m.onnx").graph
    assert not any(n.op_type == "Dropout" for n in graph.node)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dead = [n.op_type for n in graph.node if not any(o in used for o in n.output)]
    assert dead == []


def test_localize_metadata_split_and_eval_threshold(trained, tmp_path, capsys):
    data, ckpt, onnx_path = trained
    eval_json = tmp_path / "eval.json"
    assert main(["eval", "--model", str(onnx_path), "--data", str(data), "--split", "val", "--json"]) == 0
    eval_json.write_text(capsys.readouterr().out)
    best = json.loads(eval_json.read_text())["MaxBoxAcc_threshold"]
    out = tmp_path / "split.jsonl"
    assert main(["localize", str(data / "metadata" / "test"), "--images", str(data / "images"), "--model",
                 str(onnx_path), "--out", str(out), "--threshold", str(eval_json)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 24 and all("boxes" in r for r in records)
    from cream_rt.commands.localize_cmd import resolve_threshold

    assert resolve_threshold(str(eval_json)) == best and resolve_threshold("0.35") == 0.35
    assert main(["localize", str(data / "metadata" / "test"), "--model", str(onnx_path), "--out",
                 str(tmp_path / "x.jsonl")]) == 2
    assert "needs --images" in capsys.readouterr().err


def test_int8_export_quantizes_the_backbone(trained, tmp_path, capsys):
    """`cream export --int8`: every backbone Conv but the stem reads dequantized int8 weights that
    are the fp32 weights rounded per output channel (checked against the fp32 export's
    initializers); the stem reads the fp32 image and weights; no pre-activation tensor is
    quantized (a Conv and its ReLU are one unit); the head reads no int8 tensor; the recipe is in
    the manifest; and the maps stay close to the fp32 model's."""
    from onnx import numpy_helper

    data, ckpt, fp32_path = trained
    q_path = tmp_path / "int8.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(q_path), "--int8", "--calibration-data", str(data),
                 "--calibration-count", "16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] == "int8" and report["quantization"]["calibration_images"] == 16
    fp32, q = onnx.load(fp32_path), onnx.load(q_path)
    weights = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    producer = {o: n for n in q.graph.node for o in n.output}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) == sum(n.op_type == "Conv" for n in fp32.graph.node) == 7  # small-cnn
    stem = [c for c in convs if c.input[0] == "images"]
    assert len(stem) == 1 and stem[0].input[1] in weights  # fp32 image, fp32 weights
    for conv in convs:
        if conv in stem:
            continue
        x_dq, w_dq = producer[conv.input[0]], producer[conv.input[1]]
        assert x_dq.op_type == w_dq.op_type == "DequantizeLinear"
        w_q, scale = inits[w_dq.input[0]], inits[w_dq.input[1]]
        original = weights[w_dq.input[0].removesuffix("_quantized")]
        assert w_q.dtype == np.int8 and scale.shape == (original.shape[0],)  # per output channel
        restored = w_q.astype(np.float64) * scale.reshape(-1, 1, 1, 1)
        assert np.all(np.abs(restored - original) <= scale.reshape(-1, 1, 1, 1) / 2 + 1e-7)
    fp32_producer = {o: n for n in fp32.graph.node for o in n.output}
    fp32_consumers = {}
    for node in fp32.graph.node:
        for name in node.input:
            fp32_consumers.setdefault(name, []).append(node.op_type)
    quantized = [n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert quantized
    for name in quantized:  # never a Conv output that an activation reads: the activation's output is
        source = fp32_producer[name]
        assert not (source.op_type == "Conv" and {"Relu", "Clip"} & set(fp32_consumers[name])), name
    quantized_inputs = {i for n in q.graph.node if n.op_type == "DequantizeLinear" for i in n.output}
    once = {n.output[0] for n in q.graph.node if n.op_type == "Relu" and n.input[0] in quantized_inputs}
    read_by_head = set()  # the head (GAP, classifier, CAM, EM, upsampling) computes in fp32 on the
    for node in q.graph.node:  # dequantized feature map, its only int8 input, read through one Relu
        if node.op_type not in ("Conv", "Relu", "Clip", "Add", "MaxPool", "QuantizeLinear", "DequantizeLinear"):
            read_by_head |= (quantized_inputs | once) & set(node.input)
    assert len(read_by_head) == 1 and read_by_head <= once
    dequantized = producer[read_by_head.pop()].input[0]
    feature_map = producer[producer[dequantized].input[0]].input[0]  # DequantizeLinear <- QuantizeLinear <- it
    assert {n.op_type for n in fp32.graph.node if feature_map in n.input} >= {"ReduceMean", "Einsum"}
    f, i8 = OnnxPredictor.load(fp32_path), OnnxPredictor.load(q_path)
    assert i8.manifest.precision == "int8" and f.manifest.precision == "fp32" and f.manifest.quantization == {}
    recipe = i8.manifest.quantization
    assert recipe["quantized_convs"] == 6 and recipe["fp32_convs"] == 1 and recipe["calibration"] == "minmax"
    assert recipe["fp32_stem"][0].startswith("backbone.") and len(recipe["fp32_stem"]) == 2  # Conv + its ReLU
    assert recipe["dequantized_once"] == [dequantized]
    corrected = recipe["bias_correction"]
    assert corrected["convs"] == 6 and corrected["calibration_images"] == 16
    assert corrected["max_abs_shift_after"] < corrected["max_abs_shift_before"] / 2
    # Independently (all Conv outputs of each graph at once, matched by node name): on the
    # calibration images the int8 Convs' mean outputs sit on the fp32 ones, and without the
    # correction they do not.
    from cream_rt.export.layer_drift import session_with_outputs
    from cream_rt.export.quantize import split_images
    from cream_rt.metadata import read_split
    from cream_rt.preprocess import preprocess_batch

    calibration = preprocess_batch(split_images(data / "metadata" / "train", data / "images", 16), 64,
                                   f.manifest.mean, f.manifest.std)

    def conv_means(proto) -> dict:
        convs = {n.name: n.output[0] for n in proto.graph.node if n.op_type == "Conv" and n.input[0] != "images"}
        got = session_with_outputs(proto, list(convs.values())).run(
            list(convs.values()), {"images": calibration, "class_ids": -np.ones(len(calibration), np.int64)})
        return {name: value.astype(np.float64).mean(axis=(0, 2, 3)) for name, value in zip(convs, got)}

    plain = tmp_path / "plain.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(plain), "--int8", "--no-bias-correction",
                 "--calibration-data", str(data), "--calibration-count", "16"]) == 0
    assert "biases corrected" not in capsys.readouterr().out
    reference = conv_means(fp32)
    shift = lambda proto: max(np.abs(m - reference[k]).max() for k, m in conv_means(proto).items())
    assert shift(q) <= corrected["max_abs_shift_after"] + 1e-4 < shift(onnx.load(plain)) / 2
    assert OnnxPredictor.load(plain).manifest.quantization["bias_correction"] is False
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--no-bias-correction"]) == 2
    assert "--no-bias-correction goes with --int8" in capsys.readouterr().err
    test_ids = read_split(data / "metadata" / "test").image_ids  # images like the calibration ones
    x = preprocess_batch([data / "images" / i for i in test_ids], 64, f.manifest.mean, f.manifest.std)
    (lf, mf), (lq, mq) = f(x), i8(x)
    assert np.abs(lf - lq).mean() <= 0.05 * np.abs(lf).max()
    # Per image: the maps stay close, except where a calibration near-tie on this one-epoch model
    # swaps z_fg and z_bg in one engine.
    per_image = np.abs(mf - mq).mean(axis=(1, 2))
    assert np.median(per_image) <= 0.03 and (per_image > 0.1).sum() <= 2


def test_backbone_nodes_stop_at_the_head():
    """The quantized region of a hand-built graph: stem Conv + Clip, a residual block, and the
    Adds of the head (which read a pooled tensor and a constant) left out."""
    from onnx import TensorProto, helper

    from cream_rt.export.quantize import backbone_nodes

    w = lambda name: helper.make_tensor(name, TensorProto.FLOAT, [1, 1, 1, 1], [1.0])
    nodes = [helper.make_node("Conv", ["images", "w0"], ["c0"], name="stem"),
             helper.make_node("Clip", ["c0", "lo", "hi"], ["a0"], name="stem_act"),
             helper.make_node("Constant", [], ["lo"], name="lo", value=w("lo_v")),
             helper.make_node("Conv", ["a0", "w1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["a1"], name="act1"),
             helper.make_node("Add", ["a1", "a0"], ["r"], name="residual"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[1, 1]),
             helper.make_node("ReduceMean", ["p"], ["g"], name="gap"),
             helper.make_node("Add", ["g", "eps"], ["h"], name="head_add"),
             helper.make_node("Relu", ["h"], ["out"], name="head_relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [w("w0"), w("w1"), w("hi"), w("eps")])
    backbone, stem = backbone_nodes(graph)
    assert backbone == ["stem", "stem_act", "conv1", "act1", "residual", "pool"]
    assert stem == ["stem", "stem_act"]


def _one_conv_pair(weights: list[float], weight_step: float, bias: list[float] | None):
    """A 1x1 Conv (one output channel per weight) as an fp32 graph and as a QDQ graph: the input
    through uint8 at step 1, the weights int8 at `weight_step`, the bias (if any) int32 at step
    1 x weight_step, as ONNX Runtime's quantizer writes it."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.array(weights, np.float32).reshape(-1, 1, 1, 1)
    n = len(weights)
    io = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 1, 2, 2])]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n, 2, 2])]
    fp32_inits = [numpy_helper.from_array(w, "w")]
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.uint8), "xz"),
             numpy_helper.from_array(np.rint(w / weight_step).astype(np.int8), "wq"),
             numpy_helper.from_array(np.full(n, weight_step, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(n, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["images", "xs", "xz"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="wdq", axis=0)]
    if bias is not None:
        b = np.array(bias, np.float32)
        fp32_inits.append(numpy_helper.from_array(b, "b"))
        inits += [numpy_helper.from_array(np.rint(b / weight_step).astype(np.int32), "bq"),
                  numpy_helper.from_array(np.full(n, weight_step, np.float32), "bs"),
                  numpy_helper.from_array(np.zeros(n, np.int32), "bz")]
        nodes.append(helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], name="bdq", axis=0))
    tail = ["b"] if bias is not None else []
    fp32 = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["images", "w", *tail], ["y"], name="conv")], "fp32", io, out, fp32_inits))
    nodes.append(helper.make_node("Conv", ["xd", "wd", *(["bd"] if bias is not None else [])], ["y"], name="conv"))
    int8 = helper.make_model(helper.make_graph(nodes, "int8", io, out, inits))
    for m in (fp32, int8):
        m.opset_import[0].version = 17
        m.ir_version = 8
    return fp32, int8


def test_bias_correction_takes_out_a_hand_computed_shift():
    """Inputs 0.4 and 1.4 at step 1 round to 0 and 1 (-0.4 at every pixel): channel 0 (weight 1)
    comes out 0.4 low and channel 1 (weight -1.2) 0.48 high, so the int32 biases (step 0.01)
    move by +40 and -48 steps; then the shift is zero and the fp32 graph is untouched. A Conv
    without a bias gets one, int32 through a DequantizeLinear, with the same steps."""
    import onnx
    from onnx import numpy_helper

    from cream_rt.export.bias_correction import conv_output_shift, correct_biases

    x = np.array([0.4, 1.4, 0.4, 1.4], np.float32).reshape(1, 1, 2, 2)
    for bias in ([0.5, 0.0], None):
        fp32, int8 = _one_conv_pair([1.0, -1.2], 0.01, bias)
        np.testing.assert_allclose(conv_output_shift(fp32, int8, ["conv"], [x, x])["conv"], [-0.4, 0.48], atol=1e-6)
        summary = correct_biases(int8, fp32, ["conv"], [x])
        onnx.checker.check_model(int8)
        conv = next(n for n in int8.graph.node if n.op_type == "Conv")
        dequantize = next(n for n in int8.graph.node if conv.input[2] in n.output)
        assert dequantize.op_type == "DequantizeLinear"
        inits = {t.name: numpy_helper.to_array(t) for t in int8.graph.initializer}
        assert inits[dequantize.input[0]].tolist() == ([90, -48] if bias else [40, -48])
        assert inits[dequantize.input[0]].dtype == np.int32
        np.testing.assert_allclose(inits[dequantize.input[1]], [0.01, 0.01])
        assert len(fp32.graph.initializer) == (2 if bias else 1)
        np.testing.assert_allclose(conv_output_shift(fp32, int8, ["conv"], [x])["conv"], [0, 0], atol=1e-6)
        assert summary["convs"] == 1 and summary["calibration_images"] == 1
        assert summary["max_abs_shift_before"] == pytest.approx(0.48) and summary["max_abs_shift_after"] < 1e-6


@pytest.mark.parametrize("zero_point", [0, 3])
def test_dequantize_once_only_where_exact(zero_point):
    """A dequantized tensor read by two float ops gets one Relu in front of them when its uint8
    zero point is 0 (every value >= 0: the Relu changes nothing), and none otherwise; the
    outputs are the same either way."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from cream_rt.export.quantize import dequantize_once

    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["images", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"),
             helper.make_node("ReduceMean", ["dq"], ["mean"], name="gap", keepdims=0),
             helper.make_node("Sigmoid", ["dq"], ["map"], name="head")]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("map", TensorProto.FLOAT, [2, 3])], inits))
    model.opset_import[0].version = 17
    model.ir_version = 8
    x = np.array([[-3.0, 0.0, 0.7], [2.2, 5.0, 1.1]], np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"images": x})
    before = run(model)
    assert dequantize_once(model) == (["dq"] if zero_point == 0 else [])
    relus = [n for n in model.graph.node if n.op_type == "Relu"]
    assert len(relus) == (zero_point == 0)
    if relus:
        assert {n.input[0] for n in model.graph.node if n.name in ("gap", "head")} == {relus[0].output[0]}
    for a, b in zip(before, run(model)):
        np.testing.assert_array_equal(a, b)


def test_parity_per_layer_against_a_hand_computed_drift(trained, tmp_path, capsys):
    """`cream parity --reference FP32 --model INT8 --per-layer`: the first quantized tensor is the
    fp32 stem's output, so its drift is pure rounding: equal to what numpy gets by quantizing the
    fp32 tensor with the graph's scale and zero point. Later layers drift more; errors name the file."""
    import onnxruntime as ort

    from cream_rt.export.layer_drift import quantized_tensors
    from cream_rt.metadata import read_split
    from cream_rt.preprocess import preprocess_batch

    data, ckpt, fp32_path = trained
    q_path = tmp_path / "int8.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(q_path), "--int8", "--calibration-data",
                 str(data), "--calibration-count", "32"]) == 0
    capsys.readouterr()
    assert main(["parity", "--reference", str(fp32_path), "--model", str(q_path), "--data", str(data),
                 "--per-layer", "--per-layer-images", "24", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["precision"] == "int8" and abs(out["MaxBoxAccV2_reference"] - out["MaxBoxAccV2_exported"]) <= 5
    layers = out["per_layer"]["layers"]
    first = quantized_tensors(onnx.load(q_path))[0]
    assert layers[0]["tensor"] == first.name and layers[0]["layer"].endswith("+ Relu")
    # the same 24 test images, through the fp32 graph with the stem output exposed
    proto = onnx.load(fp32_path)
    proto.graph.output.append(onnx.helper.make_tensor_value_info(first.name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = read_split(data / "metadata" / "test").image_ids
    manifest = OnnxPredictor.load(fp32_path).manifest
    x = preprocess_batch([data / "images" / i for i in ids], 64, manifest.mean, manifest.std)
    a = session.run([first.name], {"images": x, "class_ids": -np.ones(len(x), np.int64)})[0].astype(np.float64)
    q = np.clip(np.round(a / first.scale) + first.zero_point, 0, 255)  # round half to even, like ONNX
    expected = np.linalg.norm((q - first.zero_point) * first.scale - a) / np.linalg.norm(a)
    assert layers[0]["drift"] == pytest.approx(expected, rel=1e-3, abs=1e-6)
    # rounding leaves out the values above the calibrated range (test images brighter than the
    # calibration ones); without saturation it is the whole drift
    saturated = (a > (255 - first.zero_point) * first.scale + first.scale / 2).mean()
    assert layers[0]["saturated"] == pytest.approx(saturated, abs=1e-9)
    assert layers[0]["rounding"] <= layers[0]["drift"] + 1e-9
    if saturated == 0:
        assert layers[0]["rounding"] == pytest.approx(expected, rel=1e-3, abs=1e-6)
    assert 0 < expected < 0.01 and max(r["drift"] for r in layers) > layers[0]["drift"]
    assert 0 < out["per_layer"]["outputs"]["maps"] < 0.2
    # bad requests: one line each, non-zero exit
    assert main(["parity", "--reference", str(fp32_path), "--model", str(fp32_path), "--data", str(data),
                 "--per-layer"]) != 0
    assert "compares an int8 export with its fp32 source" in capsys.readouterr().err
    assert main(["parity", "--reference", str(q_path), "--model", str(q_path), "--data", str(data)]) != 0
    err = capsys.readouterr().err
    assert "the reference must be an fp32 export" in err and len(err.strip().splitlines()) == 1


def test_int8_export_rejects_bad_requests(trained, tmp_path, capsys):
    from cream_rt.benchmark.engines import EngineUnavailable, build_engine
    from cream_rt.errors import CreamError
    from cream_rt.export.quantize import quantize_export

    data, ckpt, fp32_path = trained
    out = tmp_path / "q.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--int8"]) != 0
    assert "--int8 needs --calibration-data" in capsys.readouterr().err and not out.exists()
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--int8", "--calibration-metadata",
                 str(data / "metadata" / "train"), "--calibration-image-root", str(tmp_path / "nowhere")]) != 0
    err = capsys.readouterr().err
    assert "nowhere" in err and "not found" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--int8", "--fused",
                 "--calibration-data", str(data)]) != 0
    assert "does not combine with --fused" in capsys.readouterr().err and not out.exists()
    with pytest.raises(CreamError, match="no calibration images"):
        quantize_export(fp32_path, out, iter([]))
    with pytest.raises(CreamError, match="int8 scheme must be one of backbone, conv-only"):
        quantize_export(fp32_path, out, iter([]), scheme="everything")
    with pytest.raises(CreamError, match="int8 calibration must be one of"):
        quantize_export(fp32_path, out, iter([]), calibration="mse")
    assert not out.exists()
    x = np.zeros((1, 3, 64, 64), np.float32)
    with pytest.raises(EngineUnavailable, match="is a fp32 export"):
        build_engine("onnxruntime-int8", None, str(fp32_path), "cream", 2, x, np.zeros(1, np.int64))


def test_a_version_1_manifest_is_migrated():
    """A version-1 manifest (settings as top-level fields, some missing because they came later)
    reads as version 2: the contract kept, the model's config under `model` with what the
    missing fields meant then (raw mean, omega, no center, the CAM's features), outputs from
    `regressor`. Written by hand, as the version-1 exporter wrote them."""
    from cream_rt.errors import ModelFileError
    from cream_rt.manifest import Manifest

    fields = dict(input_size=64, mean=[0.0] * 3, std=[1.0] * 3, class_names=["a", "b"], mode="cream", iterations=2,
                  beta=6.0, tau=0.3, backbone="small-cnn", feature_size=8, checkpoint_sha256="", regressor=True,
                  box_threshold=0.4, pas=False)
    m = Manifest.from_json(json.dumps({**fields, "format": "cream_rt.onnx", "version": 1}), "old.onnx")
    assert (m.version, m.precision, m.input_size, m.class_names, m.box_threshold) == (2, "fp32", 64, ["a", "b"], 0.4)
    assert m.outputs == ["logits", "maps", "class_ids_used", "boxes"] and m.regressor and m.backbone == "small-cnn"
    c = m.config
    assert (c.num_classes, c.feature_size, c.box_threshold, c.stock_strides) == (2, 8, 0.4, False)
    assert (c.cream.iterations, c.cream.beta, c.cream.tau, c.cream.feature_mean, c.cream.calibration,
            c.cream.center, c.cream.em_layer) == (2, 6.0, 0.3, "raw", "omega", False, "cam")
    with pytest.raises(ModelFileError, match="invalid cream_rt manifest: model: calibration must be one of"):
        Manifest.from_json(json.dumps({**fields, "calibration": "omgea", "format": "cream_rt.onnx", "version": 1}),
                           "bad.onnx")


def test_export_with_unit_feature_mean_matches_eager(tmp_path):
    model = _model("small-cnn", 48, classes=5)
    model.config = model.config.with_cream(feature_mean="unit", iterations=3)
    export_model(model, tmp_path / "unit.onnx")
    _compare(model, tmp_path / "unit.onnx")
    raw = _model("small-cnn", 48, classes=5)
    raw.config = raw.config.with_cream(feature_mean="raw", iterations=3)
    export_model(raw, tmp_path / "raw.onnx")
    x = np.random.default_rng(1).normal(0, 1, (2, 3, 48, 48)).astype(np.float32)
    unit_maps = OnnxPredictor.load(tmp_path / "unit.onnx")(x)[1]
    assert np.abs(unit_maps - OnnxPredictor.load(tmp_path / "raw.onnx")(x)[1]).max() > 1e-3


def test_export_with_the_named_deviations_matches_eager(tmp_path):
    """border, calibration "omega", the upsampled EM grid and the adaptive start are torch ops:
    the export equals eager."""

    model = _model("small-cnn", 48, classes=5)
    model.config = model.config.with_cream(border=1, calibration="omega", upsample=2,
                                             adapt_fg=0.25, adapt_bg=0.75)
    manifest = export_model(model, tmp_path / "dev.onnx")
    assert manifest.config.cream.feature_mean == "unit"
    _compare(model, tmp_path / "dev.onnx")


def test_export_with_a_feature_center_matches_eager(tmp_path):
    """CreamConfig.center: the center is a constant of the graph; the export equals eager, says
    so in its manifest, and its maps differ from the uncentered model's."""
    model = _model("small-cnn", 48, classes=5)
    model.config = model.config.with_cream(center=True)
    with torch.no_grad():
        x = torch.from_numpy(np.random.default_rng(2).normal(0, 1, (4, 3, 48, 48)).astype(np.float32))
        model.feature_center.copy_(model.features(x).mean((0, 2, 3)))
    manifest = export_model(model, tmp_path / "center.onnx")
    assert manifest.config.cream.center is True
    _compare(model, tmp_path / "center.onnx")
    model.config = model.config.with_cream(center=False)
    plain = export_model(model, tmp_path / "plain.onnx")
    assert plain.config.cream.center is False
    x = x.numpy()[:2]
    maps = OnnxPredictor.load(tmp_path / "center.onnx")(x)[1]
    assert np.abs(maps - OnnxPredictor.load(tmp_path / "plain.onnx")(x)[1]).max() > 1e-3


def test_reduced_decode_scales_large_jpegs_only(trained, tmp_path):
    """`--reduced-decode`: a JPEG >= 2x the input on both sides decodes at the largest of 1/2,
    1/4, 1/8 that stays >= the input (libjpeg rounds up); smaller JPEGs and PNGs decode in full.
    The reduced pixels are close to a full decode shrunk by area averaging, and `cream localize
    --reduced-decode` gives the same boxes as a full decode on images that do not qualify."""
    import cv2

    from cream_rt.preprocess import decode_image_bytes, jpeg_dimensions, reduction_factor

    assert [reduction_factor(w, h, 224) for w, h in ((500, 375), (448, 448), (445, 900), (1000, 750), (1800, 1793),
                                                      (1785, 1785))] == [1, 2, 1, 2, 8, 8]
    assert reduction_factor(1784, 1784, 224) == 4  # ceil(1784 / 8) = 223
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8), (0, 0), 4)
    for progressive in (0, 1):
        data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_PROGRESSIVE,
                                            progressive])[1]
        assert jpeg_dimensions(data) == (800, 600)
        reduced, full = decode_image_bytes(data, "a.jpg", 224), decode_image_bytes(data, "a.jpg")
        assert reduced.shape == (300, 400, 3) and full.shape == (600, 800, 3)
        shrunk = cv2.resize(full, (400, 300), interpolation=cv2.INTER_AREA)
        assert np.abs(reduced.astype(int) - shrunk).mean() < 2.0
        assert decode_image_bytes(data, "a.jpg", 301).shape == (600, 800, 3)  # 300 < 301: full
    png = cv2.imencode(".png", image)[1]
    assert jpeg_dimensions(png) is None and decode_image_bytes(png, "a.png", 224).shape == (600, 800, 3)
    data, _, onnx_path = trained
    outs = {}
    for flag in ([], ["--reduced-decode"]):  # the 64 px model: synthetic 64 px images do not qualify
        out = tmp_path / f"r{len(flag)}.jsonl"
        assert main(["localize", str(data / "images"), "--model", str(onnx_path), "--out", str(out)] + flag) == 0
        outs[len(flag)] = out.read_text()
    assert outs[0] == outs[1]
    assert main(["localize", str(data / "images"), "--model", str(onnx_path), "--out", str(tmp_path / "x"),
                 "--reduced-decode", "--ray"]) != 0
