"""The fused cosine-EM op `cream::cosine_em` (cpp_ops/): a torch.library custom op with a fake
(meta) implementation, backed by a C++ CPU kernel and a CUDA kernel built by JIT on first use
(cached under CREAM_EXT_DIR or torch's extension folder). `z_fg` of `em_foreground`, faster."""
from __future__ import annotations

import os
import shutil
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import CreamError

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


@lru_cache(maxsize=None)
def load_extension(device_type: str = "cpu"):
    """Build (once, cached) and import the kernel for `device_type` ('cpu' or 'cuda')."""
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
                                      verbose=False)
        return cpp_extension.load(name="cream_cosine_em_cpu", sources=[str(SOURCES / "cosine_em_cpu.cpp")],
                                  extra_cflags=["-O3", "-march=native", "-fopenmp-simd"],
                                  build_directory=_build_dir("cpu"), verbose=False)
    except CreamError:
        raise
    except Exception as exc:
        raise CreamError(f"building the fused op from {SOURCES} failed: {exc.__class__.__name__}: "
                         f"{str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ''}") from None


@torch.library.custom_op("cream::cosine_em", mutates_args=())
def cosine_em(features: torch.Tensor, centroids: torch.Tensor, iterations: int, beta: float) -> torch.Tensor:
    """z_fg `(B,h,w)` after `iterations` E-steps (M-steps between) from `centroids (B,2,K)`."""
    return load_extension(features.device.type).cosine_em(features, centroids, iterations, beta)


@cosine_em.register_fake
def _(features, centroids, iterations, beta):
    b, _, h, w = features.shape
    return features.new_empty((b, h, w))
