"""The fused cosine-EM op `cream::cosine_em` (cpp_ops/): a torch.library op defined here with a
fake (meta) implementation, whose C++ CPU kernel and CUDA kernel are built by JIT on first use
(cached under CREAM_EXT_DIR or torch's extension folder). It computes what `reactivate` does
for T >= 1 (EM, calibration against the CAM by any of the three rules, fusion z~ + minmax(CAM))
in one call that reads the features once per EM step."""
from __future__ import annotations

import os
import shutil
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import torch

from ..config import CALIBRATIONS
from ..errors import CreamError

__all__ = ["SOURCES", "load_extension", "check_inputs", "cosine_em"]

SOURCES = Path(__file__).resolve().parents[1] / "cpp_ops"
if not (SOURCES / "cosine_em_cpu.cpp").is_file():  # installed wheel: sources inside the package
    import cream_rt.cpp_ops as _ops

    SOURCES = Path(_ops.__file__).parent


def _build_dir(name: str) -> str | None:
    root = os.environ.get("CREAM_EXT_DIR")
    if not root:
        return None
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


@cache
def load_extension(device_type: str = "cpu") -> Any:
    """Build (once, cached) and load the kernel library for `device_type` ('cpu' or 'cuda'),
    which registers its implementation of `torch.ops.cream.cosine_em`."""
    from torch.utils import cpp_extension

    if shutil.which(os.environ.get("CXX", "c++")) is None:
        raise CreamError("the fused op needs a C++ compiler (c++/g++) to build cpp_ops/ on first use; "
                         "install one, or run without --fused")
    try:
        if device_type == "cuda":
            if not torch.cuda.is_available():
                raise CreamError("the CUDA fused op needs a CUDA GPU")
            return cpp_extension.load(name="cream_cosine_em_cuda", sources=[str(SOURCES / "cosine_em_cuda.cu")],
                                      extra_cuda_cflags=["-O3", "--use_fast_math"], build_directory=_build_dir("cuda"),
                                      is_python_module=False, verbose=False)
        # -fopenmp: at::parallel_for in the kernel is an inline OpenMP region, serial without it
        try:
            return cpp_extension.load(name="cream_cosine_em_cpu", sources=[str(SOURCES / "cosine_em_cpu.cpp")],
                                      extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                                      build_directory=_build_dir("cpu"), is_python_module=False, verbose=False)
        except Exception:  # a compiler without OpenMP: the same kernel, one thread
            warnings.warn("building the fused op with OpenMP failed; it runs on one thread", stacklevel=2)
            return cpp_extension.load(name="cream_cosine_em_cpu_serial",
                                      sources=[str(SOURCES / "cosine_em_cpu.cpp")],
                                      extra_cflags=["-O3", "-march=native", "-fopenmp-simd"],
                                      build_directory=_build_dir("cpu-serial"), is_python_module=False,
                                      verbose=False)
    except CreamError:
        raise
    except Exception as exc:
        raise CreamError(f"building the fused op from {SOURCES} failed: {exc.__class__.__name__}: "
                         f"{str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ''}") from None


# The schema lives here, so that export and fake tensors need no compiler; the CPU and CUDA
# kernels register themselves with TORCH_LIBRARY_IMPL when their extension loads, so an eager
# call goes straight from the dispatcher to C++ (no Python in between).
torch.library.define("cream::cosine_em", "(Tensor features, Tensor cam, Tensor centroids, int iterations, "
                                          "float beta, float tau, bool unit_mean=False, str calibration=\"omega\") "
                                          "-> Tensor")


@torch.library.register_fake("cream::cosine_em")
def _(features, cam, centroids, iterations, beta, tau, unit_mean=False, calibration="omega"):
    b, _, h, w = features.shape
    return features.new_empty((b, h, w))


def check_inputs(features: torch.Tensor, cam: torch.Tensor, centroids: torch.Tensor, iterations: int,
                 calibration: str) -> None:
    """RuntimeError (the kernels' own messages) for inputs the op refuses, raised before the
    dispatcher, so that a refused call never reaches C++ (docs/design.md, Fused op)."""
    if features.dim() != 4:
        raise RuntimeError(f"cosine_em: features must be (B,K,h,w), got {list(features.shape)}")
    b, k, h, w = features.shape
    if tuple(centroids.shape) != (b, 2, k):
        raise RuntimeError(f"cosine_em: centroids must be (B,2,K) matching features, got {list(centroids.shape)}")
    if tuple(cam.shape) != (b, h, w):
        raise RuntimeError(f"cosine_em: cam must be (B,h,w) matching features, got {list(cam.shape)}")
    if iterations < 1:
        raise RuntimeError("cosine_em: iterations must be >= 1")
    if calibration not in CALIBRATIONS:
        raise RuntimeError(f"cosine_em: calibration must be 'omega', 'cam-mean' or 'none', got {calibration!r}")
    if len({t.device for t in (features, cam, centroids)}) != 1:
        raise RuntimeError("cosine_em: features, cam and centroids must be on one device")


def cosine_em(features: torch.Tensor, cam: torch.Tensor, centroids: torch.Tensor, iterations: int, beta: float,
              tau: float, unit_mean: bool = False, calibration: str = "omega") -> torch.Tensor:
    """CREAM's final map `z~ + minmax(CAM)` `(B,h,w)`: `iterations` E-steps (M-steps between)
    from `centroids (B,2,K)` over `features (B,K,h,w)`, calibrated against `cam (B,h,w)` by the
    rule `calibration` ("omega", "cam-mean", "none"; docs/method.md 3.3); through
    `torch.ops.cream.cosine_em` (kernel built on first use). `unit_mean`: the M-steps average
    L2-normalised features (feature_mean "unit")."""
    check_inputs(features, cam, centroids, iterations, calibration)
    if type(features) is torch.Tensor and features.device.type != "meta":  # not while tracing (fake)
        load_extension(features.device.type)
    return torch.ops.cream.cosine_em(features, cam, centroids, iterations, beta, tau, unit_mean, calibration)
