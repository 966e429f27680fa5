"""The CAM / CREAM model in PyTorch (imports torch): backbones, CAM head, CREAM's
re-activation, checkpoints. `create_model` builds a model; `reactivate` is the EM."""
from ..config import CreamConfig, ModelConfig
from .checkpoint import load_checkpoint, save_checkpoint
from .em import reactivate, reactivation
from .network import CamModel, create_model
from .tvshim import ensure_torchvision

__all__ = ["CamModel", "CreamConfig", "ModelConfig", "create_model", "load_checkpoint", "reactivate", "reactivation",
           "save_checkpoint", "ensure_torchvision"]
