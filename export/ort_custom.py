"""Run `cream export --fused` models in ONNX Runtime for parity tests: a kernel for
cream::CosineEM registered with onnxruntime-extensions. It calls the same C++ op as the eager
model (torch.ops.cream.cosine_em), so there is still one EM implementation. The extensions
package registers Python kernels in its own domain, so the node is re-domained in memory.
Slow by design (a Python call per node); ONNX Runtime for speed keeps the standard-op export."""
from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from cream_rt.errors import CreamError

from .custom_op import DOMAIN, OP_TYPE, check_version


@cache
def _register_kernel() -> str:
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError:
        raise CreamError("running a --fused export in ONNX Runtime needs onnxruntime-extensions "
                         "(pip install 'cream-rt[export]')") from None
    import torch

    from cream_rt.model.fused import cosine_em

    @onnx_op(op_type=OP_TYPE, inputs=[PyCustomOpDef.dt_float] * 3, outputs=[PyCustomOpDef.dt_float],
             attrs={"iterations": PyCustomOpDef.dt_int64, "beta": PyCustomOpDef.dt_float,
                    "tau": PyCustomOpDef.dt_float, "unit_mean": PyCustomOpDef.dt_int64,
                    "calibration": PyCustomOpDef.dt_string,
                    "plugin_namespace": PyCustomOpDef.dt_string,
                    "plugin_version": PyCustomOpDef.dt_string})
    def _cosine_em(features, cam, centroids, **attrs):
        def tensor(a):
            return torch.from_numpy(np.ascontiguousarray(a, np.float32))

        with torch.no_grad():
            out = cosine_em(tensor(features), tensor(cam), tensor(centroids), int(attrs["iterations"]),
                            float(attrs["beta"]), float(attrs["tau"]), bool(attrs["unit_mean"]),
                            str(attrs["calibration"]))
        return out.numpy()

    return get_library_path()


def custom_op_session(path: str, threads: int | None = None) -> Any:
    """An ONNX Runtime session for a model with cream::CosineEM nodes."""
    import onnx
    import onnxruntime as ort
    from onnxruntime_extensions import default_opset_domain

    library = _register_kernel()
    proto = onnx.load(path)
    check_version(proto, path)
    contrib = default_opset_domain()
    for node in proto.graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            node.domain = contrib
    for entry in proto.opset_import:
        if entry.domain == DOMAIN:
            entry.domain = contrib
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
