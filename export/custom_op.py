"""The `cream::CosineEM` ONNX node of `cream export --fused`: its ONNX schema (the exporter needs
one registered), its translation from `torch.ops.cream.cosine_em`, and the attributes
TensorRT's ONNX parser reads to find a plugin (plugin_namespace, plugin_version)."""
from __future__ import annotations

from typing import Any

import onnx
import onnxscript

DOMAIN = "cream"
OP_TYPE = "CosineEM"
# 1: z_fg only (features, centroids); 2: the final map (features, cam, centroids; tau), raw M-step;
# 3: as 2 with the unit_mean attribute (M-steps over L2-normalised features);
# 4: as 3 with the calibration attribute ("omega", "cam-mean", "none")
VERSION = 4
PLUGIN_NAMESPACE = "cream"
PLUGIN_VERSION = "1"  # tensorrt.plugin (QDP) registers its plugins as version "1"
CREAM_OPSET = onnxscript.values.Opset(DOMAIN, VERSION)


def register_schema() -> None:
    """Register the ONNX schema of cream::CosineEM once per process."""
    if onnx.defs.has(OP_TYPE, DOMAIN):
        return
    attr = onnx.defs.OpSchema.Attribute
    kind = onnx.defs.OpSchema.AttrType
    schema = onnx.defs.OpSchema(
        OP_TYPE, DOMAIN, VERSION,
        doc="CREAM's re-activation: cosine EM (`iterations` E-steps from centroids (B,2,K)), "
            "calibration against the CAM over {minmax(CAM) >= tau}, and z~ + minmax(CAM) (B,h,w).",
        inputs=[onnx.defs.OpSchema.FormalParameter("features", "T", "(B,K,h,w) pixel features"),
                onnx.defs.OpSchema.FormalParameter("cam", "T", "(B,h,w) CAM of the chosen class"),
                onnx.defs.OpSchema.FormalParameter("centroids", "T", "(B,2,K) fg/bg initial centroids")],
        outputs=[onnx.defs.OpSchema.FormalParameter("map", "T", "(B,h,w) z~ + minmax(CAM), in [0,2]")],
        type_constraints=[("T", ["tensor(float)"], "float32 only")],
        attributes=[attr("iterations", kind.INT, "E-steps T (M-steps between)"),
                    attr("beta", kind.FLOAT, "concentration of the cosine base model"),
                    attr("tau", kind.FLOAT, "CAM level of the calibration region"),
                    attr("unit_mean", kind.INT, "1: M-steps average L2-normalised features, 0: raw ones"),
                    attr("calibration", kind.STRING, "'omega', 'cam-mean' or 'none' (docs/method.md 3.3)"),
                    attr("plugin_namespace", kind.STRING, "TensorRT plugin namespace", required=False),
                    attr("plugin_version", kind.STRING, "TensorRT plugin version", required=False)],
    )
    onnx.defs.register_schema(schema)


def check_version(proto, path) -> None:
    """ModelFileError when the graph's cream::CosineEM opset is not this cream-rt's `VERSION` (a
    file from another version would run with attributes that mean something else, or none)."""
    from cream_rt.errors import ModelFileError

    found = [entry.version for entry in proto.opset_import if entry.domain == DOMAIN]
    if found and found[0] != VERSION:
        raise ModelFileError(f"{path}: uses cream::{OP_TYPE} version {found[0]}, this cream-rt runs version "
                             f"{VERSION}: re-export it with `cream export --fused`")


def cosine_em_onnx(features, cam, centroids, iterations: int, beta: float, tau: float, unit_mean: bool = False,
                   calibration: str = "omega") -> Any:
    """Translation of torch.ops.cream.cosine_em for the torch.export-based exporter."""
    return CREAM_OPSET.CosineEM(features, cam, centroids, iterations=iterations, beta=beta, tau=tau,
                                unit_mean=int(unit_mean), calibration=calibration,
                                plugin_namespace=PLUGIN_NAMESPACE,
                                plugin_version=PLUGIN_VERSION)


def translation_table() -> dict:
    """The exporter's translation of torch.ops.cream.cosine_em into one cream::CosineEM node."""
    import torch

    import cream_rt.model.fused  # noqa: F401  registers torch.ops.cream.cosine_em

    register_schema()
    return {torch.ops.cream.cosine_em.default: cosine_em_onnx}
