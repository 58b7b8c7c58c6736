"""Shared fixtures. Tests that need the real VGGSound subset skip, with the reason, where it is absent."""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def subset_path() -> Path:
    """The real clips: $ALPHAFUSE_SUBSET, else ../shared/vggsound-subset beside the checkout."""
    return Path(os.environ.get("ALPHAFUSE_SUBSET", REPO.parent / "shared" / "vggsound-subset"))


@pytest.fixture(scope="session")
def subset_dir() -> Path:
    path = subset_path()
    if not (path / "manifest.csv").is_file():
        pytest.skip(f"real VGGSound subset not found at {path} (set ALPHAFUSE_SUBSET to its folder)")
    return path


@pytest.fixture(autouse=True)
def _two_threads():
    # CI machines have 2 cores; keep torch from oversubscribing when tests run DataLoader workers.
    torch.set_num_threads(2)
    yield
