"""`cream export --triton-repo`: the config parses with Triton's own model-config schema (the
protobuf module tritonclient ships) and agrees with the ONNX graph it sits beside; bad
repositories are one error line. No Triton server runs here (docs/distributed.md)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import assert_one_error, run

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient (the `triton` extra) not installed")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def checkpoint(tiny):
    return tiny["ckpt"]


def parse_config(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig()), mc


def onnx_tensors(path) -> dict:
    """name -> (ONNX elem type, shape with None for symbolic dims), inputs and outputs."""
    model = onnx.load(str(path))
    out = {}
    for value in list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        out[value.name] = (value.type.tensor_type.elem_type, dims)
    return out


def test_config_parses_with_tritons_schema_and_matches_the_graph(checkpoint, tmp_path):
    repo = tmp_path / "repo"
    (repo / "other_model" / "1").mkdir(parents=True)  # another model in the repository is left alone
    (repo / "other_model" / "config.pbtxt").write_text('name: "other_model"\n')
    result = run("export", "--checkpoint", checkpoint, "--triton-repo", repo, "--model-name", "cream_cub",
                 "--max-batch-size", "8", expect=0)
    assert "tritonserver --model-repository" in result.stdout
    folder = repo / "cream_cub"
    config, mc = parse_config(folder / "config.pbtxt")
    assert config.name == "cream_cub" and config.backend == "onnxruntime" and config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    graph = onnx_tensors(folder / "1" / "model.onnx")
    onnx_to_triton = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.INT64: mc.TYPE_INT64}
    model = onnx.load(str(folder / "1" / "model.onnx"))
    assert [i.name for i in config.input] == [i.name for i in model.graph.input]
    assert [o.name for o in config.output] == [o.name for o in model.graph.output]
    for tensor in list(config.input) + list(config.output):
        elem_type, shape = graph[tensor.name]
        assert shape[0] is None, "the batch axis must stay dynamic in the graph"
        assert tensor.data_type == onnx_to_triton[elem_type]
        if len(shape) == 1:  # a per-image scalar: [1] in Triton, reshaped to the graph's []
            assert list(tensor.dims) == [1] and list(tensor.reshape.shape) == []
        else:
            assert list(tensor.dims) == shape[1:]
    manifest = json.loads(config.parameters["cream_rt.manifest"].string_value)
    embedded = next(p.value for p in model.metadata_props if p.key == "cream_rt.manifest")
    assert manifest == json.loads(embedded)
    labels = (folder / "labels.txt").read_text().splitlines()
    assert labels == manifest["class_names"]
    assert next(o for o in config.output if o.name == "logits").label_filename == "labels.txt"
    assert (repo / "other_model" / "config.pbtxt").read_text() == 'name: "other_model"\n'


def test_the_repository_model_computes_what_the_export_does(checkpoint, tmp_path):
    """The graph Triton would serve is the export, byte for byte in behaviour."""
    from cream_rt.runtime import OnnxPredictor

    run("export", "--checkpoint", checkpoint, "--out", tmp_path / "m.onnx", "--triton-repo", tmp_path / "repo",
        expect=0)
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    a = OnnxPredictor.load(tmp_path / "m.onnx")(x)
    b = OnnxPredictor.load(tmp_path / "repo" / "m" / "1" / "model.onnx")(x)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_odd_class_names_survive_the_config(tmp_path):
    """Quotes, backslashes, newlines and non-ASCII in the manifest round-trip through pbtxt."""
    from cream_rt.export.triton_repo import triton_config

    manifest = {"class_names": ['say "hi"', "back\\slash", "new\nline", "Größe ✓"], "versions": {}}
    tensors = [{"name": "images", "elem_type": 1, "shape": [None, 3, 8, 8]}]
    text = triton_config("m", tensors, [{"name": "logits", "elem_type": 1, "shape": [None, 4]}],
                         json.dumps(manifest, ensure_ascii=False))
    path = tmp_path / "config.pbtxt"
    path.write_text(text, encoding="utf-8")
    config, _ = parse_config(path)
    assert json.loads(config.parameters["cream_rt.manifest"].string_value) == manifest


def test_reexport_replaces_our_model_folder_whole(checkpoint, tmp_path):
    repo = tmp_path / "repo"
    run("export", "--checkpoint", checkpoint, "--triton-repo", repo, "--model-name", "m", expect=0)
    (repo / "m" / "1" / "stale.txt").write_text("from before")
    run("export", "--checkpoint", checkpoint, "--triton-repo", repo, "--model-name", "m", "--max-batch-size", "4",
        expect=0)
    assert not (repo / "m" / "1" / "stale.txt").exists()
    assert parse_config(repo / "m" / "config.pbtxt")[0].max_batch_size == 4
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # no staging or backup folder left


@pytest.mark.parametrize("case, words", [
    ("foreign_model", ["not written by cream"]),
    ("loose_file", ["not a triton model repository"]),
    ("repo_is_file", ["not a folder"]),
    ("bad_name", ["--model-name"]),
    ("no_output", ["--triton-repo"]),
    ("fused", ["--fused"]),
])
def test_bad_repositories_are_one_line(checkpoint, tmp_path, case, words):
    repo = tmp_path / "repo"
    argv = ["export", "--checkpoint", checkpoint, "--triton-repo", repo, "--model-name", "m"]
    if case == "foreign_model":
        (repo / "m").mkdir(parents=True)
        (repo / "m" / "config.pbtxt").write_text('name: "m"\nplatform: "tensorrt_plan"\n')
    elif case == "loose_file":
        repo.mkdir()
        (repo / "notes.txt").write_text("my files")
    elif case == "repo_is_file":
        repo.write_text("a file")
    elif case == "bad_name":
        argv[-1] = "my model/1"
    elif case == "no_output":
        argv = ["export", "--checkpoint", checkpoint]
    elif case == "fused":
        argv.append("--fused")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert_one_error(run(*argv), *words)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written or half written
