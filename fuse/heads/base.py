"""What every fusion head shares: the interface, the MLP, modality dropout.

A head maps a dict of batched embeddings (``{"video": (B, Dv), "audio_tokens": (B, T, D), ...}``,
float32, named as in the cache) to logits. It declares which embeddings it reads
(``needs``), and its ``config`` (name, per-clip input shapes, class count, options) rebuilds it:
a saved head is its config plus a state dict.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from alphafuse.settings import SETTINGS

MODALITY_NAMES = ("video", "audio")

# Options that live in TrainConfig's own fields (the rest of a head's options go in
# TrainConfig.head_options). A head takes those among them its __init__ names.
SHARED_OPTIONS = ("transform", "target", "alpha", "modalities", "hidden", "dropout", "modality_dropout")

# Parameters that mix or scale whole inputs (a learned alpha, the late head's weight, layer
# weights): trained at TrainConfig.alpha_lr, since at the head's 1e-4 a scalar moves by at most
# ~3% in 25 epochs of 13 steps.
MIXING_PARAMETERS = ("log_alpha", "weight_logit", "layer_logits")


def modality_of(name: str) -> str | None:
    """``video``, ``video_tokens``, ``video_layers`` -> video; ``audio...`` -> audio; else None."""
    prefix = name.split("_", 1)[0]
    return prefix if prefix in MODALITY_NAMES else None


def drop_modalities(inputs: dict, p: float) -> dict:
    """Modality dropout: with probability ``p`` a sample loses one of its modalities (chosen
    uniformly; every input of that modality zeroed), so each modality goes missing with p / 2
    and no sample loses both. Draws from the global torch RNG (seeded per training run)."""
    present = [m for m in MODALITY_NAMES if any(modality_of(n) == m for n in inputs)]
    if p == 0 or len(present) < 2:
        return inputs
    first = next(iter(inputs.values()))
    batch, device = first.shape[0], first.device
    lose = torch.rand(batch, device=device) < p
    which = torch.randint(len(present), (batch,), device=device)
    out = dict(inputs)
    for i, modality in enumerate(present):
        keep = ~(lose & (which == i))
        for name, x in inputs.items():
            if modality_of(name) == modality:
                out[name] = x * keep.view(batch, *[1] * (x.ndim - 1)).to(x.dtype)
    return out


# The paper's MLP (1536 -> 1024 -> 512 -> classes, dropout 0.5), defined once in settings.py's table
# (--hidden, --dropout); every MLP head's signature and TrainConfig take these.
HIDDEN: tuple[int, ...] = SETTINGS["hidden"].default
DROPOUT: float = SETTINGS["dropout"].default


class FusionHead(nn.Sequential):
    """``in_dim -> hidden[0] -> ... -> num_classes`` with ReLU and dropout after each hidden layer.

    The paper's head is 1536 -> 1024 -> 512 -> classes with dropout 0.5; ``hidden=()`` gives a
    linear probe.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: Sequence[int] = HIDDEN,
                 dropout: float = DROPOUT):
        sizes = [int(in_dim), *(int(h) for h in hidden)]
        if any(s < 1 for s in sizes) or num_classes < 1:
            raise ValueError(f"head sizes must be positive, got in_dim={in_dim}, hidden={tuple(hidden)}, "
                             f"num_classes={num_classes}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(sizes[-1], int(num_classes)))
        super().__init__(*layers)
        self.in_dim, self.num_classes = sizes[0], int(num_classes)
        self.hidden, self.dropout = tuple(sizes[1:]), float(dropout)


class Head(nn.Module):
    """Base class of the registered heads (see fuse/heads/__init__.py).

    Subclasses implement ``needs`` (class method: the embedding names read, given the options),
    ``combine(inputs) -> logits`` and, where their options need more than a type check,
    ``check_options``. They call ``_record(shapes, num_classes, **options)`` in ``__init__`` so
    that ``config`` can rebuild them.
    """

    name = ""   # set by register_head

    def __init__(self, modality_dropout: float = 0.0):
        super().__init__()
        if not (isinstance(modality_dropout, numbers.Real) and 0 <= modality_dropout < 1):
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout!r}")
        self.modality_dropout = float(modality_dropout)

    def _record(self, shapes: dict, num_classes: int, **options) -> None:
        self.shapes = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
        self.num_classes = int(num_classes)
        self.options = {**options, "modality_dropout": self.modality_dropout}

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def needs(cls, **options) -> tuple[str, ...]:
        raise NotImplementedError

    @classmethod
    def check_options(cls, options: dict) -> dict:
        return options

    @classmethod
    def build(cls, shapes: dict, num_classes: int, **options) -> "Head":
        missing = [n for n in cls.needs(**options) if n not in shapes]
        if missing:
            raise ValueError(f"head {cls.name} needs the shapes of {', '.join(missing)}")
        return cls(shapes, num_classes, **options)

    @classmethod
    def from_config(cls, config: dict) -> "Head":
        options = {k: v for k, v in config.items() if k not in ("name", "shapes", "num_classes")}
        shapes = {k: tuple(v) for k, v in config["shapes"].items()}
        return cls.build(shapes, config["num_classes"], **options)

    def input_names(self) -> tuple[str, ...]:
        """The embeddings this head reads."""
        return tuple(type(self).needs(**self.options))

    @property
    def config(self) -> dict:
        return {"name": self.name, "shapes": {k: list(v) for k, v in self.shapes.items()},
                "num_classes": self.num_classes, **{k: list(v) if isinstance(v, tuple) else v
                                                    for k, v in self.options.items()}}

    # -- computation -------------------------------------------------------------------------

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.combine(self.drop(inputs))

    def drop(self, inputs: dict) -> dict:
        """Modality dropout while training (see drop_modalities); the inputs as given otherwise."""
        if self.training and self.modality_dropout > 0:
            return drop_modalities(inputs, self.modality_dropout)
        return inputs

    def combine(self, inputs: dict) -> torch.Tensor:
        raise NotImplementedError

    def training_loss(self, inputs: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, logits for the running train scores) of one training batch."""
        logits = self(inputs)
        return F.cross_entropy(logits, labels), logits

    def mixing_parameters(self) -> list[str]:
        """Names of the parameters trained at alpha_lr (see MIXING_PARAMETERS)."""
        return [n for n, _ in self.named_parameters() if any(part in MIXING_PARAMETERS for part in n.split("."))]

    def trained_values(self) -> dict:
        """Interpretable trained scalars to report (e.g. learned_alpha, learned_weight)."""
        return {}


def check_mlp(hidden, dropout) -> None:
    """The MLP options as TrainConfig validates them (FusionHead repeats the check)."""
    if not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and h > 0 for h in hidden):
        raise ValueError(f"hidden sizes must be positive integers, got {tuple(hidden)}")
    if not (isinstance(dropout, numbers.Real) and 0 <= dropout < 1):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def pooled_dims(shapes: dict, names: Sequence[str]) -> list[int]:
    """Feature sizes of pooled (per-clip 1-d) inputs; anything else is a one-line error."""
    dims = []
    for name in names:
        shape = tuple(shapes[name])
        if len(shape) != 1:
            raise ValueError(f"{name} must be a pooled (N, D) embedding for this head, got per-clip shape {shape}; "
                             f"a multi-view embedding needs its views info in the cache")
        dims.append(shape[0])
    return dims
