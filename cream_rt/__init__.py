"""cream_rt: CAM / CREAM weakly supervised object localization, from training to a fast
ONNX runtime, with the wsolevaluation protocol. Importing it never imports torch."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
