"""Shared fixtures: paths to the real wsolevaluation metadata in ../shared, and skips with reasons."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("CREAM_NO_PROGRESS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_META = REPO.parent / "shared" / "data" / "wsol_metadata"


@pytest.fixture(scope="session")
def shared_meta() -> Path:
    if not SHARED_META.is_dir():
        pytest.skip(f"real wsolevaluation metadata not found at {SHARED_META}")
    return SHARED_META


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """A 3-class synthetic data set (64 px), a model trained on it for one epoch, and its
    CREAM export: paths under `data`, `ckpt`, `model`."""
    from cli_helpers import run

    root = tmp_path_factory.mktemp("tiny")
    data, ckpt, model = root / "data", root / "m.pt", root / "m.onnx"
    run("synth", "--out", data, "--train", "24", "--val", "6", "--test", "12", "--size", "64", "--classes", "3",
        expect=0)
    run("train", "--data", data, "--out", ckpt, "--epochs", "1", "--batch-size", "8", "--bn-batches", "1",
        "--input-size", "64", expect=0)
    run("export", "--checkpoint", ckpt, "--out", model, expect=0)
    return {"root": root, "data": data, "ckpt": ckpt, "model": model}
