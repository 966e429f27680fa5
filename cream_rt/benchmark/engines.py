"""The engines `cream bench` and the pytest-benchmark suites time, behind one interface: a
callable that turns one prepared batch into score maps. Third-party CAM tools (pytorch-grad-cam
GradCAM, torchcam CAM) run on the same model and batch and are marked as such."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class EngineUnavailable(Exception):
    """The engine cannot run here (package missing, no GPU, mode unsupported); says why."""


@dataclass
class Engine:
    """One timed variant: a callable running a prepared batch, with its name, mode, T and origin."""

    name: str
    mode: str
    iterations: int
    run: Callable[[], object]
    third_party: bool = False
    sync: Callable[[], None] | None = None


ENGINE_NAMES = ("eager", "eager-fused", "eager-channels-last", "torch-compile", "onnxruntime", "onnxruntime-int8",
                "openvino", "openvino-bf16", "openvino-int8", "tensorrt", "grad-cam", "torchcam")
INT8_ENGINES = ("onnxruntime-int8", "openvino-int8")  # what times the int8 export


class LogitsOnly:
    """Wrap the CAM model as `images -> logits` (what grad-cam and torchcam hook into)."""

    @staticmethod
    def build(model):
        import torch

        class _Logits(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.backbone, self.classifier = inner.backbone, inner.classifier
                self.pool = torch.nn.AdaptiveAvgPool2d(1)

            def forward(self, x):
                return self.classifier(self.pool(self.backbone(x)).flatten(1))

        return _Logits(model).eval()


def _last_conv_module(module):
    import torch

    last = None
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ReLU, torch.nn.ReLU6, torch.nn.Sequential)):
            last = m
    return last


def build_engine(name: str, model, onnx_path: str | None, mode: str, iterations: int, x: np.ndarray,
                 class_ids: np.ndarray, device: str = "cpu") -> Engine:
    """An Engine for `name`; raises EngineUnavailable with the reason where it cannot run."""
    if name in ("eager", "eager-fused", "eager-channels-last", "torch-compile"):
        return _torch_engine(name, model, mode, iterations, x, class_ids, device)
    if name.startswith(("onnxruntime", "openvino")):
        from cream_rt.errors import CreamError
        from cream_rt.session import load_predictor

        if onnx_path is None:
            raise EngineUnavailable("no ONNX model for this mode")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") \
            else ["CPUExecutionProvider"]
        try:
            predictor = load_predictor(onnx_path, "openvino-bf16" if name == "openvino-bf16" else name.split("-")[0],
                                       providers if name.startswith("onnxruntime") else None)
        except CreamError as exc:  # OpenVINO missing, no bf16 on this CPU
            raise EngineUnavailable(str(exc)) from None
        wanted = "int8" if name in INT8_ENGINES else "fp32"
        if predictor.manifest.precision != wanted:
            raise EngineUnavailable(f"{onnx_path} is a {predictor.manifest.precision} export, {name} times {wanted}")
        return Engine(name, mode, iterations, lambda: predictor(x, class_ids))
    if name == "tensorrt":
        return _tensorrt_engine(model, onnx_path, mode, iterations, x, class_ids, device)
    if name in ("grad-cam", "torchcam"):
        if mode != "cam":
            raise EngineUnavailable(f"{name} computes CAM-style maps only (mode cam)")
        return _third_party(name, model, x, class_ids)
    raise EngineUnavailable(f"unknown engine {name!r}; expected one of {', '.join(ENGINE_NAMES)}")


def _torch_engine(name: str, model, mode: str, iterations: int, x: np.ndarray, class_ids: np.ndarray,
                  device: str) -> Engine:
    """eager, eager-fused (CREAM's EM in the fused C++/CUDA op), eager-channels-last, torch-compile."""
    import torch

    from cream_rt.model.eager import EagerPredictor

    net = model
    images = torch.from_numpy(x).to(device)
    ids = torch.from_numpy(class_ids).to(device)
    fused = name == "eager-fused"
    if fused:
        _check_fused_op(model, mode, device)
    if name == "eager-channels-last":
        net = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    predictor = EagerPredictor(net, mode, iterations, device, fused)
    forward = lambda: predictor.model(images, ids, mode, iterations, fused)  # noqa: E731
    if name == "torch-compile":
        try:
            compiled = torch.compile(predictor.model)
            with torch.no_grad():
                compiled(images, ids, mode, iterations, fused)
        except Exception as exc:  # no compiler, unsupported op
            raise EngineUnavailable(f"torch.compile failed here: {exc.__class__.__name__}: "
                                    f"{str(exc).splitlines()[0][:120] if str(exc) else ''}") from None
        forward = lambda: compiled(images, ids, mode, iterations, fused)  # noqa: E731

    def run():
        with torch.no_grad():
            return forward()

    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    return Engine(name, mode, iterations, run, sync=sync)


def _check_fused_op(model, mode: str, device: str) -> None:
    """EngineUnavailable unless the fused op supports the model's config and builds here."""
    from cream_rt.errors import CreamError
    from cream_rt.model.em import check_fused
    from cream_rt.model.fused import load_extension

    c = model.config.cream
    try:
        if mode == "cream":  # CAM never reaches the op
            check_fused(c)
    except CreamError as exc:
        raise EngineUnavailable(str(exc)) from None
    try:
        load_extension("cuda" if device.startswith("cuda") else "cpu")
    except Exception as exc:  # no compiler, no CUDA toolkit
        raise EngineUnavailable(f"the fused op could not be built here: {str(exc).splitlines()[0][:160]}") from None


def _tensorrt_engine(model, onnx_path: str | None, mode: str, iterations: int, x: np.ndarray,
                     class_ids: np.ndarray, device: str) -> Engine:
    """An engine built from the ONNX export with TensorRT (GPU only)."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:
        raise EngineUnavailable(f"TensorRT is not importable here ({exc.__class__.__name__})") from None
    if not device.startswith("cuda") or onnx_path is None:
        raise EngineUnavailable("TensorRT needs a CUDA device (--device cuda) and an ONNX export")
    import tempfile

    import torch

    from cream_rt.export.tensorrt_build import TensorRTPredictor
    from cream_rt.export.tensorrt_build import build_engine as build_trt

    engine_path = tempfile.mkdtemp() + "/model.engine"
    build_trt(onnx_path, engine_path, batch=(1, len(x), max(len(x), 32)))
    predictor = TensorRTPredictor(engine_path, model.config.num_classes, model.config.input_size)
    images, ids = torch.from_numpy(x).cuda(), torch.from_numpy(class_ids).cuda()
    return Engine(name="tensorrt", mode=mode, iterations=iterations, run=lambda: predictor.run_torch(images, ids),
                  sync=torch.cuda.synchronize)


def _third_party(name: str, model, x: np.ndarray, class_ids: np.ndarray) -> Engine:
    import torch
    import torch.nn.functional as F

    from cream_rt.model.tvshim import import_torchvision_models

    import_torchvision_models()  # both tools import torchvision
    net = LogitsOnly.build(model)
    images = torch.from_numpy(x)
    size = images.shape[-2:]
    targets = class_ids.tolist()
    if name == "grad-cam":
        try:
            from pytorch_grad_cam import GradCAM
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        except ImportError:
            raise EngineUnavailable("pytorch-grad-cam is not installed "
                                    "(pip install -r requirements-bench.txt)") from None
        cam = GradCAM(model=net, target_layers=[_last_conv_module(net.backbone)])
        outputs = [ClassifierOutputTarget(c) for c in targets]
        return Engine(name, "cam", 0, lambda: cam(input_tensor=images, targets=outputs), third_party=True)
    try:
        from torchcam.methods import CAM
    except ImportError:
        raise EngineUnavailable("torchcam is not installed (pip install -r requirements-bench.txt)") from None
    extractor = CAM(net, target_layer=_last_conv_module(net.backbone),
                    fc_layer=net.classifier, input_shape=tuple(x.shape[1:]))

    def run():
        with torch.no_grad():
            scores = net(images)
        maps = extractor(targets, scores)[0]  # (B, h, w), normalised per map
        return F.interpolate(maps.unsqueeze(1), size=size, mode="bicubic", align_corners=False)

    return Engine(name, "cam", 0, run, third_party=True)
