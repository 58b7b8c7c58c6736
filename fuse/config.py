"""TrainConfig: how one head is built and trained, validated once on construction."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields

import torch

from alphafuse.data.memory import check_fits
from alphafuse.settings import SEED_RANGE, SETTINGS, check_int

from .heads import DEFAULT_HEAD, check_head_options, get_head
from .heads.base import DROPOUT, HIDDEN
from .transforms import MODALITIES, resolve_target, validate_transform


@dataclass
class TrainConfig:
    """How to build and train one head. Defaults are the paper's, defined once in settings.py's table.

    ``head`` names a registered head (fuse/heads/); ``head_options`` holds its own options
    (e.g. ``{"weight": 0.3}`` for late, ``{"dim": 128}`` for bottleneck); the shared ones are
    fields here: ``transform``/``target``/``alpha`` (concat only), ``modalities`` (concat,
    layers), ``hidden``/``dropout`` (the MLP of concat, gated, late and layers; the bottleneck
    head has none), ``modality_dropout`` (every head: the chance a training sample loses one
    modality).

    ``alpha=None`` is replaced by the transform's default on construction, so the config that
    is saved says which alpha was really used. ``target`` accepts timesformer/ast aliases and
    is stored as video/audio. ``alpha_lr`` is the learning rate of the parameters that scale or
    mix whole inputs (a learned alpha, the late head's learned weight, the layer weights): at the
    head's 1e-4, 25 epochs of 13 steps could move them by at most ~3%. ``patience``: stop when
    the validation score (top-1, then loss) has not improved for that many epochs (None: train
    every epoch; the best epoch is reported either way).
    """

    transform: str = SETTINGS["transform"].default
    target: str = SETTINGS["target"].default
    alpha: float | None = None
    modalities: str = SETTINGS["modalities"].default
    hidden: tuple[int, ...] = HIDDEN
    dropout: float = DROPOUT
    epochs: int = SETTINGS["epochs"].default
    batch_size: int = SETTINGS["batch_size"].default
    lr: float = SETTINGS["lr"].default
    seed: int = SETTINGS["seed"].default
    device: str = "cpu"
    alpha_lr: float = 1e-2
    head: str = DEFAULT_HEAD
    head_options: dict = field(default_factory=dict)
    modality_dropout: float = SETTINGS["modality_dropout"].default
    patience: int | None = SETTINGS["patience"].default

    def __post_init__(self):
        self.alpha = validate_transform(self.transform, self.alpha)
        self.target = resolve_target(self.target)
        if self.modalities not in MODALITIES:
            raise ValueError(f"unknown modalities {self.modalities!r}; choose one of {', '.join(MODALITIES)}")
        if not all(_is_int(h) and h > 0 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive integers, got {self.hidden}")
        self.hidden = tuple(check_int(h, "hidden", 1) for h in self.hidden)
        # Whatever the inputs, consecutive hidden layers hold h[i] * h[i+1] weights (x4 in
        # training: gradients and Adam's moments); refuse sizes no machine here can hold.
        least = 16 * (sum(a * b for a, b in zip(self.hidden, self.hidden[1:])) + 2 * sum(self.hidden))
        check_fits(least, f"hidden={','.join(map(str, self.hidden))}: the hidden layers")
        for name, high in (("dropout", 1), ("modality_dropout", 1)):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and 0 <= value < high):
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
            setattr(self, name, float(value))
        for name in ("lr", "alpha_lr"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name, least in (("epochs", 1), ("batch_size", 1), ("seed", None)):
            value = getattr(self, name)
            if not (_is_int(value) and (least is None or value >= least)):
                raise ValueError(f"{name} must be a{' positive' if least else 'n'} integer, got {value!r}")
            # numpy integers from a sweep become plain ints; each within its range (settings.py)
            setattr(self, name, check_int(value, name, *(SEED_RANGE if name == "seed" else (least, None))))
        if self.patience is not None:
            if not (_is_int(self.patience) and self.patience >= 1):
                raise ValueError(f"patience must be a positive number of epochs or None, got {self.patience!r}")
            self.patience = check_int(self.patience, "patience", 1)
        self.lr, self.alpha_lr = float(self.lr), float(self.alpha_lr)
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"unknown device {self.device!r}; use cpu, cuda or cuda:N") from None
        self._check_head()

    def _check_head(self) -> None:
        entry = get_head(self.head)
        if not isinstance(self.head_options, dict):
            raise ValueError(f"head_options must be a dict of the {self.head} head's options, got {self.head_options!r}")
        self.head_options = check_head_options(self.head, dict(self.head_options))
        # Shared settings a head does not take would silently do nothing: refuse them.
        if self.transform != "none" and "transform" not in entry.options:
            raise ValueError(f"transform {self.transform} applies to the concat head only; head {self.head} "
                             f"fuses untransformed embeddings (use transform none)")
        if self.modalities != "both" and "modalities" not in entry.options:
            raise ValueError(f"head {self.head} fuses both modalities; modalities={self.modalities} is for the "
                             f"concat and layers heads")
        entry.needs(self.head_kwargs())

    def head_kwargs(self) -> dict:
        """The options of ``head``: the shared fields it takes, then its head_options."""
        taken = get_head(self.head).options
        shared = {name: getattr(self, name) for name in ("transform", "target", "alpha", "modalities", "hidden",
                                                          "dropout", "modality_dropout") if name in taken}
        return {**shared, **self.head_options}

    def needs(self) -> tuple[str, ...]:
        """The cache embeddings this head reads."""
        return get_head(self.head).needs(self.head_kwargs())

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden), "head_options": dict(self.head_options)}

    @classmethod
    def from_dict(cls, options: dict) -> "TrainConfig":
        """Build from a plain dict (a --config file); unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**options)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
