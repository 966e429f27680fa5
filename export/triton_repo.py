"""A Triton Inference Server model repository for an export: `DIR/<name>/config.pbtxt`,
`DIR/<name>/1/model.onnx` and `DIR/<name>/labels.txt`, for Triton's ONNX Runtime backend.
Names, types and shapes come from the ONNX graph itself; the cream_rt manifest (classes,
preprocessing) is the model's `cream_rt.manifest` parameter, which clients read from the
model-config endpoint."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from cream_rt.atomic import chmod_like_new
from cream_rt.errors import CreamError, OutputError
from cream_rt.manifest import MANIFEST_KEY

__all__ = ["TRITON_TYPES", "graph_io", "triton_config", "check_repository", "write_repository", "model_name_for"]

# ONNX TensorProto element type -> Triton data type
TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32",
                7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}
MARKER = "cream_rt"  # config.pbtxt parameter naming the tool, so a re-export may replace the folder
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


def graph_io(onnx_path: str | os.PathLike) -> tuple[list[dict], list[dict], str]:
    """(inputs, outputs, manifest JSON) of an ONNX file: each tensor's name, ONNX element type
    and shape (None for a symbolic dimension), read without the weights."""
    import onnx

    model = onnx.load(os.fspath(onnx_path), load_external_data=False)

    def describe(values) -> list[dict]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            out.append({"name": value.name, "elem_type": tensor.elem_type, "shape": dims})
        return out

    initializers = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    manifest = next((p.value for p in model.metadata_props if p.key == MANIFEST_KEY), None)
    if manifest is None:
        raise CreamError(f"{onnx_path}: no cream_rt manifest in the model (not exported by `cream export`)")
    return describe(inputs), describe(model.graph.output), manifest


def _pbtxt_string(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept, quotes, backslashes and control
    characters escaped)."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _tensor_entry(tensor: dict, label_file: str | None = None) -> str:
    """One input/output of the config: the batch dimension left out (Triton adds it), a
    per-image scalar (`class_ids`) given as [1] and reshaped to the graph's []."""
    if tensor["elem_type"] not in TRITON_TYPES:
        raise CreamError(f"tensor {tensor['name']}: ONNX element type {tensor['elem_type']} has no Triton type")
    dims = [-1 if d is None else d for d in tensor["shape"][1:]]
    lines = [f'    name: {_pbtxt_string(tensor["name"])}', f'    data_type: {TRITON_TYPES[tensor["elem_type"]]}']
    if dims:
        lines.append(f"    dims: [ {', '.join(map(str, dims))} ]")
    else:
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    if label_file:
        lines.append(f"    label_filename: {_pbtxt_string(label_file)}")
    return "  {\n" + "\n".join(lines) + "\n  }"


def triton_config(name: str, inputs: list[dict], outputs: list[dict], manifest_json: str,
                  max_batch_size: int = 32, queue_delay_us: int = 500) -> str:
    """config.pbtxt text for Triton's onnxruntime backend with dynamic batching."""
    for tensor in inputs + outputs:
        if not tensor["shape"] or tensor["shape"][0] is not None:
            raise CreamError(f"tensor {tensor['name']}: expected a dynamic batch dimension first, got shape "
                             f"{tensor['shape']} (export with `cream export`)")
    preferred = sorted({b for b in (max_batch_size // 4, max_batch_size // 2, max_batch_size) if b >= 1})
    entries_in = ",\n".join(_tensor_entry(t) for t in inputs)
    entries_out = ",\n".join(_tensor_entry(t, "labels.txt" if t["name"] == "logits" else None) for t in outputs)
    return (f"# written by cream_rt (`cream export --triton-repo`); tensors as in 1/model.onnx\n"
            f"name: {_pbtxt_string(name)}\n"
            f'backend: "onnxruntime"\n'
            f"max_batch_size: {max_batch_size}\n"
            f"input [\n{entries_in}\n]\n"
            f"output [\n{entries_out}\n]\n"
            f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
            f"  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
            f"parameters {{\n  key: {_pbtxt_string(MARKER)}\n  value: {{ string_value: "
            f"{_pbtxt_string(json.loads(manifest_json).get('versions', {}).get('cream_rt', ''))} }}\n}}\n"
            f"parameters {{\n  key: {_pbtxt_string(MANIFEST_KEY)}\n  value: {{ string_value: "
            f"{_pbtxt_string(manifest_json)} }}\n}}\n")


def model_name_for(checkpoint: str | os.PathLike) -> str:
    """The default model name: the checkpoint's file stem, reduced to Triton-safe characters."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(checkpoint).stem).strip("._") or "cream"
    return stem


def check_repository(repo: str | os.PathLike, name: str) -> Path:
    """Before any work: `repo` is a folder that may hold other models (or does not exist yet),
    `name` is a valid model name, and `repo/name` is absent or a model we wrote earlier."""
    if not NAME_PATTERN.match(name):
        raise CreamError(f"--model-name {name!r}: use letters, digits, '_', '.' and '-' only")
    root = Path(repo)
    if root.exists() and not root.is_dir():
        raise OutputError(f"--triton-repo {root}: exists and is not a folder")
    if root.is_dir():
        loose = [p.name for p in root.iterdir() if not p.is_dir() and not p.name.startswith(".")]
        if loose:
            raise OutputError(f"--triton-repo {root}: not a Triton model repository (holds the file {loose[0]}; "
                              "a repository holds only model folders)")
    target = root / name
    if target.exists() and not _ours(target):
        raise OutputError(f"--triton-repo {root}: the model folder {name} exists and was not written by cream; "
                          "choose another --model-name or remove it")
    return target


def _ours(folder: Path) -> bool:
    config = folder / "config.pbtxt"
    try:
        return config.is_file() and f'key: "{MARKER}"' in config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def write_repository(onnx_path: str | os.PathLike, repo: str | os.PathLike, name: str,
                     max_batch_size: int = 32) -> dict:
    """Copy the export into `repo/name/1/model.onnx` with its config and labels. The model
    folder is built beside its place and renamed in, replacing an earlier one of ours whole."""
    target = check_repository(repo, name)
    inputs, outputs, manifest_json = graph_io(onnx_path)
    config = triton_config(name, inputs, outputs, manifest_json, max_batch_size)
    class_names = json.loads(manifest_json)["class_names"]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent))
    try:
        chmod_like_new(staging, 0o777)  # a server running as another user reads it
        (staging / "1").mkdir()
        shutil.copyfile(onnx_path, staging / "1" / "model.onnx")
        data = Path(f"{os.fspath(onnx_path)}.data")
        if data.is_file():  # external weights: the graph names them relative to itself
            shutil.copyfile(data, staging / "1" / f"{Path(onnx_path).name}.data")
        (staging / "config.pbtxt").write_text(config, encoding="utf-8")
        (staging / "labels.txt").write_text("".join(n.replace("\n", " ") + "\n" for n in class_names),
                                            encoding="utf-8")
        old = None
        if target.exists():
            old = target.with_name(f".{name}.old-{os.getpid()}")
            target.rename(old)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"repository": os.fspath(repo), "model": name, "config": os.fspath(target / "config.pbtxt"),
            "onnx": os.fspath(target / "1" / "model.onnx"), "max_batch_size": max_batch_size,
            "inputs": [t["name"] for t in inputs], "outputs": [t["name"] for t in outputs]}
