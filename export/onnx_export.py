"""Checkpoint -> one ONNX graph: backbone, classifier, CAM of the chosen class, `reactivate`
with T unrolled, bicubic upsampling and minmax; embeddings as initializers; dynamic batch.
Inputs `images (B,3,H,W)` float32 normalised, `class_ids (B,)` int64 (-1 = predicted top-1);
outputs `logits (B,C)`, `maps (B,H,W)` in [0,1], `class_ids (B,)` used."""
from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path

import torch

from cream_rt import __version__
from cream_rt.atomic import atomic_path
from cream_rt.errors import CreamError
from cream_rt.manifest import MANIFEST_KEY, OUTPUTS, REGRESSOR_OUTPUT, Manifest
from cream_rt.model.checkpoint import file_sha256, load_checkpoint
from cream_rt.model.network import CamModel

__all__ = ["INPUT_NAMES", "ExportWrapper", "build_manifest", "export_model", "export_checkpoint"]

INPUT_NAMES = ["images", "class_ids"]


class ExportWrapper(torch.nn.Module):
    """The model with mode and T fixed, as the exported graph computes it; with a box
    regressor, its boxes are a fourth output."""

    def __init__(self, model: CamModel, mode: str, iterations: int, fused: bool = False, regressor=None):
        super().__init__()
        self.model, self.mode, self.iterations, self.fused = model, mode, iterations, fused
        self.regressor = regressor

    def forward(self, images: torch.Tensor, class_ids: torch.Tensor) -> tuple:
        outputs = self.model(images, class_ids, self.mode, self.iterations, self.fused)
        return outputs if self.regressor is None else (*outputs, self.regressor(images))


def build_manifest(model: CamModel, mode: str, iterations: int, checkpoint: str | None,
                   fused: bool = False, regressor: bool = False) -> Manifest:
    """The manifest of `model` exported in `mode` with T = `iterations`."""
    import onnx

    from cream_rt.model.backbones import get_backbone

    cfg = model.config
    cream = mode == "cream" and iterations > 0
    return Manifest(input_size=cfg.input_size, mean=list(cfg.mean), std=list(cfg.std),
                    class_names=list(cfg.class_names) or [str(c) for c in range(cfg.num_classes)],
                    mode=mode, iterations=iterations if mode == "cream" else 0, model=cfg.to_dict(),
                    outputs=[*OUTPUTS, REGRESSOR_OUTPUT] if regressor else list(OUTPUTS), pas=cfg.pas,
                    box_threshold=cfg.box_threshold,
                    network_threshold=None if cfg.pas else
                    get_backbone(cfg.backbone).cream_defaults(cfg.stock_strides).box_threshold(cream),
                    fused=fused and cream,
                    fallback_classes=[int(c) for c in (~model.embedding_fitted).nonzero().flatten().tolist()],
                    checkpoint_sha256=file_sha256(checkpoint) if checkpoint else "",
                    versions={"cream_rt": __version__, "torch": str(torch.__version__), "onnx": onnx.__version__,
                              "python": platform.python_version()})


def export_model(model: CamModel, out: str | os.PathLike, mode: str = "cream", iterations: int | None = None,
                 opset: int = 20, checkpoint: str | None = None, external_data: bool = False,
                 fused: bool = False, regressor=None) -> Manifest:
    """Export `model` to one ONNX graph, checked with full shape inference, with its manifest.

    Args:
        model: the CAM model (any backbone); its embeddings become initializers.
        out: the ONNX file, written atomically.
        mode: "cream" (EM unrolled `iterations` times) or "cam".
        iterations: T (default: the model's `cream.iterations`).
        opset: ONNX opset, 18..20.
        checkpoint: the file the model came from (its SHA-256 goes into the manifest).
        external_data: weights in `OUT.data` beside the graph.
        fused: one cream::CosineEM node instead of the unrolled EM (the TensorRT plugin path).
        regressor: a `BoxRegressor` (`cream train-regressor`) whose boxes become the `boxes` output.
    Returns:
        The manifest embedded in the file.
    """
    import onnx

    if mode not in ("cam", "cream"):
        raise CreamError(f"mode must be 'cam' or 'cream', got {mode!r}")
    t = model.config.cream.iterations if iterations is None else iterations
    if t is None or t < 0:
        raise CreamError(f"iterations must be >= 0, got {t}")
    if fused and mode == "cream" and t > 0:
        from cream_rt.model.em import check_fused

        check_fused(model.config.cream)  # before tracing: one error line, not a trace
    if opset < 18:
        raise CreamError(f"opset must be >= 18 for the torch.export-based exporter, got {opset}")
    model = model.eval()
    if regressor is not None:
        rc, mc = regressor.config, model.config
        if (rc.input_size, tuple(rc.mean), tuple(rc.std)) != (mc.input_size, tuple(mc.mean), tuple(mc.std)):
            raise CreamError("the regressor's input size or normalisation differs from the model's; one graph "
                             "needs one input")
        regressor = regressor.eval()
    wrapper = ExportWrapper(model, mode, t, fused, regressor).eval()
    size = model.config.input_size
    images = torch.randn(2, 3, size, size)
    class_ids = torch.tensor([0, -1], dtype=torch.int64)
    batch = torch.export.Dim("batch", min=1, max=4096)
    table = None
    if fused:
        from .custom_op import translation_table

        table = translation_table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (images, class_ids), dynamo=True, opset_version=opset,
            input_names=INPUT_NAMES, output_names=[*OUTPUTS, *([REGRESSOR_OUTPUT] if regressor is not None else [])],
            custom_translation_table=table,
            dynamic_shapes={"images": {0: batch}, "class_ids": {0: batch}}, optimize=True, verbose=False)
    if program is None:  # torch.onnx.export returns None only for the legacy exporter (dynamo=False)
        raise CreamError("the ONNX exporter returned no program")
    proto = program.model_proto
    manifest = build_manifest(model, mode, t, checkpoint, fused, regressor is not None)
    entry = proto.metadata_props.add()
    entry.key, entry.value = MANIFEST_KEY, manifest.to_json()
    proto.producer_name = "cream_rt"
    proto.producer_version = __version__
    onnx.checker.check_model(proto, full_check=True)
    out = Path(out)
    with atomic_path(out) as tmp:
        if external_data:
            onnx.save_model(proto, tmp, save_as_external_data=True, location=out.name + ".data")
        else:
            onnx.save_model(proto, tmp)
    return manifest


def export_checkpoint(checkpoint: str, out: str, mode: str = "cream", iterations: int | None = None,
                      opset: int = 20, external_data: bool = False, fused: bool = False,
                      regressor: str | None = None) -> Manifest:
    """`export_model` of a checkpoint file, with the box regressor file `regressor` if given."""
    model, _ = load_checkpoint(checkpoint)
    box_model = None
    if regressor:
        from cream_rt.model.regressor import load_regressor

        box_model = load_regressor(regressor)
    return export_model(model, out, mode, iterations, opset, checkpoint, external_data, fused, box_model)
