"""Reading torch files safely: `torch.load(weights_only=True)` (tensors and plain data only,
never arbitrary objects), torch's own warnings silenced, any failure one line naming the file."""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFileError

__all__ = ["load_torch_file"]


def load_torch_file(path: str | os.PathLike, what: str = "torch file") -> Any:
    """The file's content on the CPU; ModelFileError `<path>: not a readable <what> (...)`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: {what} not found")
    if path.suffix.lower() == ".onnx":
        raise ModelFileError(f"{path}: an ONNX export, not a {what}; this command takes the checkpoint (.pt) the "
                             "export was made from")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save's zip, or a legacy pickle
        raise ModelFileError(f"{path}: not a readable {what} (not a torch file)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is ours
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise ModelFileError(f"{path}: not a readable {what} (it holds Python objects other than tensors and "
                                 "plain data; refused without unpickling them)") from None
        raise ModelFileError(f"{path}: not a readable {what} (not a torch file)") from None
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable {what} ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
