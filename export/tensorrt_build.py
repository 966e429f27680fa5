"""`cream export --trt`: an ONNX export (standard ops, or --fused with the cream::CosineEM plugin)
-> a serialized TensorRT engine: fp32 or fp16, a dynamic batch profile, a timing cache. TensorRT
is imported lazily; everything here is unverified on our machines (no TensorRT installable)."""
from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from cream_rt.atomic import atomic_path
from cream_rt.errors import CreamError


def import_tensorrt() -> ModuleType:
    """The `tensorrt` module, or CreamError saying how to install it."""
    try:
        import tensorrt as trt
    except Exception as exc:
        raise CreamError(f"TensorRT is not importable here ({exc.__class__.__name__}); "
                         "build engines on a machine with TensorRT 10 (pip install 'cream-rt[trt]')") from None
    return trt


def build_engine(onnx_path: str, out: str, fp16: bool = False, batch: tuple[int, int, int] = (1, 8, 32),
                 timing_cache: str | None = None, workspace_gib: float = 4.0) -> dict:
    """Parse `onnx_path`, build with one optimisation profile (min, opt, max batch) and write the
    engine atomically; the timing cache is read and updated when given."""
    import onnx

    from .custom_op import OP_TYPE, check_version

    proto = onnx.load(onnx_path, load_external_data=False)
    check_version(proto, onnx_path)  # a file from another version: one line, even without TensorRT
    trt = import_tensorrt()
    if any(n.op_type == OP_TYPE for n in proto.graph.node):
        from . import tensorrt_plugin  # noqa: F401  registers cream::CosineEM
    size = next(d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[2:3])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CreamError(f"{onnx_path}: TensorRT could not parse the model: {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    lo, opt, hi = batch
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (lo, 3, size, size), (opt, 3, size, size), (hi, 3, size, size))
    profile.set_shape("class_ids", (lo,), (opt,), (hi,))
    config.add_optimization_profile(profile)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CreamError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    with atomic_path(out) as tmp:
        tmp.write_bytes(bytes(serialized))
    if timing_cache:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    return {"engine": os.fspath(out), "fp16": fp16, "batch_profile": list(batch), "tensorrt": trt.__version__}


class TensorRTPredictor:
    """`predictor(x, class_ids) -> (logits, maps)` over a serialized engine (torch CUDA buffers)."""

    def __init__(self, engine_path: str, num_classes: int, input_size: int):
        trt = import_tensorrt()
        import torch

        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise CreamError(f"{engine_path}: not a TensorRT engine for this TensorRT/GPU")
        self.context = self.engine.create_execution_context()
        self.num_classes, self.input_size = num_classes, input_size
        self.stream = torch.cuda.Stream()

    def run_torch(self, images, class_ids) -> tuple:
        """CUDA tensors in, CUDA tensors out (no host copies): logits, maps, class ids used."""
        import torch

        b = images.shape[0]
        outputs = {"logits": torch.empty(b, self.num_classes, device="cuda"),
                   "maps": torch.empty(b, self.input_size, self.input_size, device="cuda"),
                   "class_ids_used": torch.empty(b, dtype=torch.int64, device="cuda")}
        self.context.set_input_shape("images", tuple(images.shape))
        self.context.set_input_shape("class_ids", (b,))
        self.context.set_tensor_address("images", images.data_ptr())
        self.context.set_tensor_address("class_ids", class_ids.data_ptr())
        for name, tensor in outputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise CreamError("TensorRT execution failed")
        self.stream.synchronize()
        return outputs["logits"], outputs["maps"], outputs["class_ids_used"]

    def __call__(self, x, class_ids=None):
        import numpy as np
        import torch

        images = torch.from_numpy(np.ascontiguousarray(x, np.float32)).cuda()
        ids = np.full(len(x), -1, np.int64) if class_ids is None else np.asarray(class_ids, np.int64)
        logits, maps, _ = self.run_torch(images, torch.from_numpy(ids).cuda())
        return logits.cpu().numpy(), maps.cpu().numpy()
