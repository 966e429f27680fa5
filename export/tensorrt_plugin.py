"""TensorRT plugin for the cream::CosineEM node of `cream export --fused`, with the TensorRT 10
Python plugin API (tensorrt.plugin). The implementation runs the same CUDA kernel as the eager
model (torch.ops.cream.cosine_em on CUDA) on TensorRT's stream. Imported lazily; never run here
(TensorRT cannot be installed on our machines): see the GPU check script."""
from __future__ import annotations

import tensorrt.plugin as trtp  # noqa: F401  (ImportError where TensorRT is missing: callers catch it)

PLUGIN_ID = "cream::CosineEM"


@trtp.register(PLUGIN_ID)
def cosine_em_desc(features: trtp.TensorDesc, cam: trtp.TensorDesc, centroids: trtp.TensorDesc, iterations: int,
                   beta: float, tau: float, unit_mean: int, calibration: str) -> trtp.TensorDesc:
    """z~ + minmax(CAM) (B,h,w) float32 from features (B,K,h,w), cam (B,h,w), centroids (B,2,K)."""
    shape = features.shape_expr
    return trtp.from_shape_expr((shape[0], shape[2], shape[3]), dtype=features.dtype)


@trtp.impl(PLUGIN_ID)
def cosine_em_impl(features: trtp.Tensor, cam: trtp.Tensor, centroids: trtp.Tensor, iterations: int, beta: float,
                   tau: float, unit_mean: int, calibration: str, outputs: tuple[trtp.Tensor], stream: int) -> None:
    """TensorRT's plugin body: the fused op on the plugin's tensors, on its stream."""
    import torch

    from cream_rt.model.fused import cosine_em

    x = torch.as_tensor(features, device="cuda")
    c = torch.as_tensor(cam, device="cuda")
    mu = torch.as_tensor(centroids, device="cuda")
    out = torch.as_tensor(outputs[0], device="cuda")
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        out.copy_(cosine_em(x, c, mu, int(iterations), float(beta), float(tau), bool(unit_mean), str(calibration)))
