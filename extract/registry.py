"""The backbone registry: every frozen encoder alphafuse can extract with, by name.

timm-style: a model family lives in one file of extract/ and registers each variant with
``@register_backbone``; everything else (the CLI's choices, extraction, a cache's rebuild for
``predict``) asks this registry, so adding a backbone touches its own file and its tests only.
extract/__init__.py imports every module of the package, which runs the decorators.

A registered ``build(checkpoint=None, **options)`` returns a frozen, eval-mode module made by
:func:`extract.checkpoint.build_backbone` that provides what :class:`Backbone` states; the
registry adds ``backbone_name``, ``options`` and :func:`preprocess` to every module it builds.

A backbone owns its preprocessing: ``input_specs`` returns data/'s generic ``VideoConfig`` /
``AudioConfig`` or a spec class its family file registers with :func:`register_spec` (as
torchvision attaches transforms to its weights and timm a data config to each model). A cache
records each spec's ``to_dict()`` and :func:`spec_from_dict` reads it back by its ``kind``.
"""
from __future__ import annotations

import functools
import inspect
import types
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

MODALITIES = ("video", "audio", "audiovisual")
# A family whose modality depends on the checkpoint (hf: the snapshot's model type) registers as
# "any"; the built module's ``modality`` says what it is, and its input_specs refuses the others.
ANY = "any"


@dataclass(frozen=True)
class Extras:
    """What extraction keeps beside the pooled embeddings: token sequences, and the pooled
    embedding after some blocks (``layers``: None for none, "all", or block indices)."""

    tokens: bool = False
    layers: str | tuple[int, ...] | None = None
    dtype: str = "float16"        # how tokens and layers are stored: float16 (half the disk) or float32

    def __post_init__(self):
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"token and layer caches are float16 or float32, got {self.dtype!r}")

    def layer_indices(self, depth: int) -> tuple[int, ...]:
        if self.layers is None:
            return ()
        if self.layers == "all":
            return tuple(range(depth))
        bad = [i for i in self.layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f"layers {bad} do not exist: this backbone has blocks 0..{depth - 1}")
        return tuple(self.layers)

    @classmethod
    def parse(cls, tokens: bool = False, layers: str | None = None, dtype: str = "float16") -> "Extras":
        """From the command line: ``layers`` is "all" or "i,j,..." (0-based block indices)."""
        if layers is None or layers == "all":
            return cls(bool(tokens), layers, dtype)
        try:
            picked = tuple(sorted({int(x) for x in str(layers).split(",") if x.strip()}))
        except ValueError:
            raise ValueError(f"layers must be 'all' or comma-separated block indices such as 3,7,11, "
                             f"got {layers!r}") from None
        if not picked:
            raise ValueError("layers names no block")
        return cls(bool(tokens), picked, dtype)

    def to_dict(self) -> dict:
        out = {"tokens": self.tokens, "layers": list(self.layers) if isinstance(self.layers, tuple) else self.layers}
        if self.tokens or self.layers is not None:
            out["dtype"] = self.dtype
        return out


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    modality: str                 # what it encodes: video, audio, audiovisual (both), or any (the checkpoint's)
    build: Callable               # build(checkpoint=None, **options) -> frozen module
    options: dict = field(default_factory=dict)   # every option build takes, with its default
    help: str = ""
    config_reader: Callable | None = None   # a family's own config file (TSAM's JSON) -> options

    def can_encode(self, modality: str) -> bool:
        return self.modality == modality or self.modality in ("audiovisual", ANY)


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(name: str, *, modality: str, help: str = "", config_reader: Callable | None = None):
    """Decorator: register ``build`` under ``name``. Its keyword defaults are the options.

    The decorated function stays callable as before (``load_timesformer(...)``); every module
    it returns records ``backbone_name`` and the full ``options`` it was built with, which is
    what a cache stores to rebuild it (:func:`rebuild`).
    """
    if modality not in MODALITIES + (ANY,):
        raise ValueError(f"modality must be one of {', '.join(MODALITIES + (ANY,))}, got {modality!r}")

    def decorator(build: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].build.__wrapped__ is not build:
            raise ValueError(f"backbone {name!r} is registered twice")
        signature = inspect.signature(build)
        options = {k: p.default for k, p in signature.parameters.items()
                   if k != "checkpoint" and p.default is not inspect.Parameter.empty}

        @functools.wraps(build)
        def built(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            model = build(*bound.args, **bound.kwargs)
            model.backbone_name = name
            model.options = {k: v for k, v in bound.arguments.items() if k != "checkpoint"}
            # One implementation for every family (named like the attribute, so it pickles).
            model.preprocess = types.MethodType(preprocess, model)
            missing = [m for m in backbone_members() if not hasattr(model, m)]
            if missing:
                raise TypeError(f"backbone {name}: {type(model).__name__} lacks {', '.join(missing)} "
                                "(what extract/registry.py's Backbone protocol states)")
            return model

        doc = help or (inspect.getdoc(build) or "").split("\n")[0]
        _REGISTRY[name] = BackboneEntry(name, modality, built, options, doc, config_reader)
        return built

    return decorator


def backbone_names(modality: str | None = None) -> list[str]:
    """Registered names, sorted; with ``modality``, those that can encode it."""
    return sorted(n for n, e in _REGISTRY.items() if modality is None or e.can_encode(modality))


def get_backbone(name: str) -> BackboneEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(backbone_names())}") from None


def create_backbone(name: str, checkpoint=None, **overrides):
    """Build the registered backbone ``name`` from ``checkpoint`` (None: random weights), with options.

    Unknown option names are an error naming the allowed ones.
    """
    entry = get_backbone(name)
    unknown = sorted(set(overrides) - set(entry.options))
    if unknown:
        raise ValueError(f"backbone {name} has no option {', '.join(unknown)}; its options are "
                         f"{', '.join(f'{k}={v!r}' for k, v in entry.options.items())}")
    for key, value in overrides.items():
        default = entry.options[key]
        if default is None or value is None:
            continue
        want = (int, float) if isinstance(default, float) else type(default)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, want):
            raise ValueError(f"backbone option {name}.{key} must be a {type(default).__name__} "
                             f"(like its default {default!r}), got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool):   # within what a 64-bit integer holds
            from alphafuse.settings import check_int   # here: settings imports the registry for its choices
            check_int(value, f"backbone option {name}.{key}")
    return entry.build(checkpoint, **overrides)


def parse_option(name: str, key: str, text: str):
    """A ``key=value`` backbone option from the command line, typed like the option's default."""
    entry = get_backbone(name)
    if key not in entry.options:
        raise ValueError(f"backbone {name} has no option {key!r}; its options are {', '.join(entry.options)}")
    default = entry.options[key]
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ValueError(f"backbone option {name}.{key} must be a {type(default).__name__}, got {text!r}") from None
    return text


# ----------------------------------------------------------------------------- what a backbone is

@runtime_checkable
class Backbone(Protocol):
    """What a registered backbone provides (extraction, caches, ``predict`` and the end-to-end
    model use nothing else). ``modality`` is "video", "audio" or "audiovisual" (every tower)."""

    backbone_name: str        # its registry name (set by register_backbone)
    options: dict             # every build option, with the value it was built with
    config: dict              # architecture and input, recorded in caches
    fingerprint: str          # "sha256:<checkpoint file>" or "random:<config and seed>"
    pretrained: bool
    checkpoint: Any           # the checkpoint path it was built from, or None
    seed: int | None

    def input_specs(self, modality: str = ...) -> dict:
        """{input name: spec}: ``VideoConfig``, ``AudioConfig`` or a registered spec (the
        ``load(path, clip_id, threads)`` kind); a video backbone also takes ``spatial_crops``."""

    def embedding_shapes(self, modality: str = ..., extras: Extras = ...) -> dict:
        """{embedding name: per-clip shape, or {"shape", "views"[, "label_space"]}}."""

    def extract(self, modality: str, inputs: dict, extras: Extras = ...) -> dict:
        """Batched inputs {input name: (B, ...)} -> {embedding name: (B, *shape) tensor}."""

    def forward_features(self, *inputs, **kwargs):
        """The family's own feature map, before the pooling ``extract`` applies."""

    def preprocess(self, path, with_info: bool = False, **kwargs):
        """One clip's model inputs exactly as extraction feeds them (see :func:`preprocess`)."""


def backbone_members() -> tuple[str, ...]:
    """The attributes and methods :class:`Backbone` states (checked on every registered build)."""
    methods = {n for n, v in vars(Backbone).items() if callable(v) and not n.startswith("_")}
    return tuple(sorted(set(Backbone.__annotations__) | methods))


def preprocess(model, path: str | Path, with_info: bool = False, *, modality: str | None = None,
               clip_id: str | None = None, spatial_crops: int = 1, temporal_views: int = 1,
               sampling: str | None = None, threads: int | None = None):
    """``{input name: float32 tensor}`` of one clip: what extraction feeds ``model`` for ``path``.

    No batch dimension; views, frames and channels in the order the model takes them; the
    names of ``input_specs``. ``modality`` defaults to everything the backbone encodes; the
    view options are extraction's (``--spatial-crops``, ``--temporal-views``, ``--sampling``).

    With ``with_info`` it returns ``(inputs, info)``: ``info["has_audio"]`` (bool), and
    ``info["frame_indices"]``: the 0-based positions of the frames fed, in feeding order (all
    temporal views, view after view), within the frame sequence the family's decoder samples
    from (the clip's shown frames; TSAM: its 10-fps resampled frames); None without video.

    It cannot drift from extraction: the specs come from extraction's own choice
    (``embed.Roles.specs``), the tensors from the same dataset item extraction's DataLoader
    collates (``data.dataset.dataset_for_specs``), and the indices are those the sampling
    functions reported while that item was decoded (``data.sampling.recording_frames``).
    Raises ClipError for a clip that cannot be read.
    """
    from alphafuse.data import Clip, ClipError
    from alphafuse.data.dataset import SLOT_KEYS, dataset_for_specs
    from alphafuse.data.sampling import recording_frames

    from .embed import Roles

    # a family registered as "any" (hf) says on the built module what this checkpoint encodes
    role = modality or getattr(model, "modality", None) or get_backbone(model.backbone_name).modality
    specs = Roles({role: model}).specs(spatial_crops, temporal_views, sampling)
    clip = Clip(clip_id or Path(path).stem, str(path), "?", "?")
    dataset = dataset_for_specs([clip], ["?"], specs, decode_threads=threads)
    with recording_frames() as frames:
        item = dataset[0]
    if item["error"] is not None:
        raise ClipError(clip.clip_id, item["error"])
    inputs = {slot: item[SLOT_KEYS[slot]] for slot in specs}
    if not with_info:
        return inputs
    return inputs, {"frame_indices": list(frames) if "video" in specs else None,
                    "has_audio": bool(item["has_audio"])}


# ----------------------------------------------------------------------------- input specs

class InputSpec:
    """Base of a registered input spec: a frozen dataclass with a ``kind`` and a
    ``load(path, clip_id, threads)`` that returns the input (audio specs: ``(tensor, has_audio)``),
    plus ``output_shape`` (one clip) and ``views``. ``to_dict`` is what a cache records."""

    kind: ClassVar[str]
    # Fields added after caches were written, with the value those caches were made with: a dict
    # without them reads as what made it, not as today's default.
    LEGACY: ClassVar[dict] = {}

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict):
        d = {**cls.LEGACY, **{k: v for k, v in d.items() if k != "kind"}}
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{cls.__name__} has no field {', '.join(unknown)}")
        return cls(**d)


_SPECS: dict[str, type] = {}


def register_spec(cls: type) -> type:
    """Class decorator: make ``cls.kind`` readable from caches by :func:`spec_from_dict`. A kind
    is forever: caches on disk name it, so a family keeps reading every kind it ever wrote."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"{cls.__name__} needs a class attribute kind (a non-empty string)")
    if kind in _SPECS and _SPECS[kind].__qualname__ != cls.__qualname__:
        raise ValueError(f"input spec kind {kind!r} is registered twice")
    _SPECS[kind] = cls
    return cls


def spec_kinds() -> list[str]:
    return sorted(_SPECS)


def spec_from_dict(slot: str, d: dict):
    """The spec a cache recorded for input ``slot`` ("video" or "audio"). A dict without ``kind``
    is data/'s generic VideoConfig or AudioConfig (what every cache before kinds wrote)."""
    from alphafuse.data import AudioConfig, VideoConfig

    if "kind" in d:
        try:
            return _SPECS[d["kind"]].from_dict(d)
        except KeyError:
            raise ValueError(f"unknown input spec kind {d['kind']!r}; registered: "
                             f"{', '.join(spec_kinds())}") from None
    if slot not in ("video", "audio"):
        raise ValueError(f"input slot {slot!r} has no kind and is not video or audio")
    return VideoConfig.from_dict(d) if slot == "video" else AudioConfig.from_dict(d)
