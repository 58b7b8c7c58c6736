"""How one modality is re-weighted before the two embeddings are concatenated.

The alpha-transformer fuses a frozen TimeSformer (video) and a frozen AST (audio) embedding by
concatenating them, ``[video, audio]``, after transforming one of them. Shrinking or growing
one modality's embedding changes how much the (freshly initialised) head first attends to it:

    none        x                   the plain concatenation baseline
    sqrt        sqrt(relu(x))       as in the paper's code; the embeddings have negative
                                    entries, which this zeroes before the square root
    pos_scalar  x * alpha, alpha > 1          (default 1.5, the paper's text; its notebook used 2)
    neg_scalar  x * alpha, 0 < alpha < 1      (default 0.75)
    scale       x * alpha, any alpha > 0      (no default: say which alpha)
    learned     x * alpha, alpha a trained parameter initialised at 1 (takes no alpha)
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

TRANSFORMS = ("none", "sqrt", "pos_scalar", "neg_scalar", "scale", "learned")

# None: the transform takes no alpha, or (scale) there is no sensible default to fill in.
DEFAULT_ALPHA: dict[str, float | None] = {
    "none": None,
    "sqrt": None,
    "pos_scalar": 1.5,
    "neg_scalar": 0.75,
    "scale": None,
    "learned": None,
}

# One line per transform, for command-line help (literals: the CLI reads them without importing
# torch, see catalogue.py, and adds each DEFAULT_ALPHA).
TRANSFORM_HELP = {
    "none": "plain concatenation [video, audio]",
    "sqrt": "sqrt(relu(x)) as in the paper's code: the embeddings have negative entries, zeroed first",
    "pos_scalar": "x * alpha, alpha > 1 (the default is the paper's text; its notebook used 2)",
    "neg_scalar": "x * alpha, 0 < alpha < 1",
    "scale": "x * alpha, any alpha > 0 (give alpha)",
    "learned": "x * alpha, alpha trained with the head from 1 (its own learning rate, alpha_lr)",
}

TARGET_ALIASES = {"timesformer": "video", "video": "video", "ast": "audio", "audio": "audio"}

MODALITIES = ("both", "video", "audio")

_TAKES_ALPHA = ("pos_scalar", "neg_scalar", "scale")


def validate_transform(name: str, alpha: float | None = None) -> float | None:
    """Check ``alpha`` against what ``name`` allows; return it, or the default when None.

    Raises ValueError naming the allowed range, e.g. "pos_scalar needs alpha > 1, got 0.5".
    """
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; choose one of {', '.join(TRANSFORMS)}")
    if name not in _TAKES_ALPHA:
        if alpha is not None:
            raise ValueError(f"transform {name} takes no alpha, got {alpha}; give no alpha, or use "
                             f"pos_scalar, neg_scalar or scale")
        return None
    if alpha is None:
        alpha = DEFAULT_ALPHA[name]
        if alpha is None:
            raise ValueError(f"transform {name} needs an explicit alpha > 0 (e.g. alpha=2)")
    alpha = float(alpha)
    allowed = {
        "pos_scalar": (alpha > 1, "alpha > 1"),
        "neg_scalar": (0 < alpha < 1, "0 < alpha < 1"),
        "scale": (alpha > 0, "alpha > 0"),
    }
    ok, rule = allowed[name]
    if not ok or not np.isfinite(alpha):
        raise ValueError(f"{name} needs {rule}, got {alpha:g}")
    return alpha


def resolve_target(target: str) -> str:
    """Map ``timesformer|video|ast|audio`` to the modality name used inside: video or audio."""
    try:
        return TARGET_ALIASES[target]
    except KeyError:
        raise ValueError(f"unknown target {target!r}; choose one of "
                         f"{', '.join(TARGET_ALIASES)}") from None


def transform_ops(name: str, alpha=None) -> tuple[bool, float | None, bool]:
    """What transform ``name`` does, as ``(sqrt, fixed_scale, learned)``: the one definition both
    training paths apply (``apply_transform`` here, the stacked heads in fuse/stacked.py).

    ``sqrt``: take ``rectified_sqrt``; ``fixed_scale``: multiply by this alpha; ``learned``:
    multiply by the current value of a trained scale. ``alpha`` must already be validated.
    """
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; choose one of {', '.join(TRANSFORMS)}")
    if name in _TAKES_ALPHA and alpha is None:
        raise ValueError(f"transform {name} needs an alpha; call validate_transform first")
    return name == "sqrt", float(alpha) if name in _TAKES_ALPHA else None, name == "learned"


def rectified_sqrt(x):
    """sqrt(relu(x)), as the paper's code transforms an embedding (torch tensor or numpy array)."""
    if isinstance(x, np.ndarray):
        return np.sqrt(np.maximum(x, 0))
    return torch.sqrt(torch.relu(x))


def apply_transform(x, name: str, alpha: float | None):
    """Apply transform ``name`` to an embedding (torch tensor or numpy array, any shape).

    ``alpha`` must already be validated (see :func:`validate_transform`); for ``learned`` it is
    the current value of the trained scale (a tensor, so that gradients reach it).
    """
    if name == "learned" and alpha is None:
        raise ValueError("transform learned needs its current scale as alpha")
    sqrt, scale, learned = transform_ops(name, alpha if name != "learned" else None)
    if sqrt:
        return rectified_sqrt(x)
    if learned:
        return x * alpha
    return x * scale if scale is not None else x


class ScaledConcat(nn.Module):
    """Transform the ``target`` modality, then concatenate ``[video, audio]``.

    With ``modalities="video"`` or ``"audio"`` only that embedding is returned (the unimodal
    baselines). A transform there must target the kept modality: one aimed at the dropped
    modality would silently do nothing, so it is refused.
    """

    def __init__(self, transform: str = "none", target: str = "audio", alpha: float | None = None,
                 modalities: str = "both"):
        super().__init__()
        if modalities not in MODALITIES:
            raise ValueError(f"unknown modalities {modalities!r}; choose one of {', '.join(MODALITIES)}")
        self.transform = transform
        self.alpha = validate_transform(transform, alpha)
        self.target = resolve_target(target)
        self.modalities = modalities
        if modalities != "both" and transform != "none" and self.target != modalities:
            raise ValueError(f"transform {transform} targets {self.target}, which modalities={modalities} "
                             f"leaves out; use transform none for a unimodal baseline, or target {modalities}")
        if transform == "learned":
            # Trained in log space: alpha = exp(log_alpha) stays > 0 like the grid's scales, and
            # Adam's steps on it are relative changes, so one learning rate suits any magnitude.
            self.log_alpha = nn.Parameter(torch.zeros(()))

    @property
    def learned_alpha(self) -> float | None:
        """The trained scale of a ``learned`` transform (1 before training); None otherwise."""
        return float(self.log_alpha.detach().exp()) if self.transform == "learned" else None

    def out_dim(self, video_dim: int, audio_dim: int) -> int:
        return {"both": video_dim + audio_dim, "video": video_dim, "audio": audio_dim}[self.modalities]

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        alpha = self.log_alpha.exp() if self.transform == "learned" else self.alpha
        if self.target == "video":
            video = apply_transform(video, self.transform, alpha)
        else:
            audio = apply_transform(audio, self.transform, alpha)
        if self.modalities == "video":
            return video
        if self.modalities == "audio":
            return audio
        return torch.cat([video, audio], dim=-1)

    def extra_repr(self) -> str:
        alpha = "" if self.alpha is None else f", alpha={self.alpha:g}"
        return f"transform={self.transform}, target={self.target}{alpha}, modalities={self.modalities}"
