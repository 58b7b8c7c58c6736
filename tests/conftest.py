"""Shared fixtures. Tests that need the real VGGSound subset skip, with the reason, where it is absent."""
import os
from pathlib import Path

import pytest
import torch

from tests.paths import subset_path


@pytest.fixture(scope="session")
def subset_dir() -> Path:
    path = subset_path()
    if not (path / "manifest.csv").is_file():
        reason = f"real VGGSound subset not found at {path} (set ALPHAFUSE_SUBSET to its folder)"
        if os.environ.get("CI"):
            # CI has the subset: a missing one is a broken checkout, never 29 quiet skips.
            pytest.fail(f"{reason}; CI is set, so the real-clip tests must run", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(autouse=True)
def _two_threads():
    # CI machines have 2 cores; keep torch from oversubscribing when tests run DataLoader workers.
    torch.set_num_threads(2)
    yield
