"""The machine a measurement ran on: CPU, GPU, versions of every runtime, peak memory."""
from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

__all__ = ["machine_info", "command_line", "peak_rss_mb", "reset_peak_rss"]


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that produced a result: `python -m bench.<module>` and its arguments
    (`argv`, or the process's own when the module runs as a script)."""
    return f"python -m bench.{module} " + shlex.join(sys.argv[1:] if argv is None else argv)


def machine_info() -> dict:
    """CPU model and cores, GPU and driver when present, and the versions of every runtime."""
    info: dict[str, object] = {"platform": platform.platform(), "python": platform.python_version(),
                               "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for module in ("numpy", "numba", "cv2", "onnxruntime", "onnx", "torch", "pytorch_grad_cam", "torchcam", "tensorrt"):
        try:
            mod = __import__(module)
            versions[module] = str(getattr(mod, "__version__", "?"))
        except Exception:
            continue
    from cream_rt import __version__

    versions["cream_rt"] = __version__
    info["versions"] = versions
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    return info


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (Linux VmHWM), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
