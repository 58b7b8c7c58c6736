"""Where the tests find the checkout and the real VGGSound subset."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def subset_path() -> Path:
    """The real clips: $ALPHAFUSE_SUBSET, else ../shared/vggsound-subset beside the checkout."""
    return Path(os.environ.get("ALPHAFUSE_SUBSET", REPO.parent / "shared" / "vggsound-subset"))
