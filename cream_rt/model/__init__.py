"""The CAM / CREAM model in PyTorch (imports torch): backbones, CAM head, CREAM's
re-activation, checkpoints. `create_model` builds a model; `wrap` / `CREAM` take any CNN
classifier in memory; `reactivate` is the EM."""
from ..config import CamForm, CreamConfig, ModelConfig
from .api import CREAM, CamOutput, wrap
from .checkpoint import load_checkpoint, save_checkpoint
from .em import reactivate, reactivation
from .hub import WeightsPreprocessing
from .network import CamModel, create_model
from .tvshim import ensure_torchvision

__all__ = ["CREAM", "CamForm", "CamOutput", "WeightsPreprocessing", "wrap", "CamModel", "CreamConfig", "ModelConfig",
           "create_model", "load_checkpoint", "reactivate", "reactivation", "save_checkpoint", "ensure_torchvision"]
