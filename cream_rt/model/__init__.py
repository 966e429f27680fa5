"""The CAM / CREAM model in PyTorch (imports torch): backbones, CAM head, re-activation."""
