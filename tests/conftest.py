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
