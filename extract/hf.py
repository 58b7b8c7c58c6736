"""Any Hugging Face audio or video encoder, from a local snapshot folder, loaded strictly.

A snapshot is the folder ``save_pretrained`` writes: ``config.json``, ``model*.safetensors``
(or ``pytorch_model*.bin``, read by this project's safe reader) and the processor's
``preprocessor_config.json`` (or ``video_preprocessor_config.json``). Nothing is downloaded:
every transformers call here is ``local_files_only`` and reads that folder only.

Which network is built (``_choose``), in order:

1. a classifier architecture (``config.architectures[0]`` ends in ``For*Classification``): that
   class; the pooled embedding is the input of its ``classifier`` module, captured by a hook
   while transformers' own forward runs, so it *is* what that forward computes (AST: the
   pooler output; TimeSformer: the final-norm CLS; VideoMAE: ``fc_norm`` of the token mean or
   the CLS without ``fc_norm``; Wav2Vec2/HuBERT/WavLM/Whisper: projector then masked mean), and
   ``logits`` its output;
2. a composite model whose encoder is one tower (``TOWERS``: Whisper's encoder, CLAP's audio
   tower, CLIP's and SigLIP's vision towers): that tower alone;
3. otherwise the model type's base model (``AutoModel``), e.g. VideoMAE under
   ``VideoMAEForPreTraining`` or Wav2Vec2 under ``Wav2Vec2ForCTC``.

In 2 and 3 the pooled embedding is ``pooler_output`` where the model has one, else the mean of
``last_hidden_state`` over tokens or frames (masked when the inputs carry an attention mask).
Keys of the file outside the built network (a decoder, a CTC head, the text tower) are dropped
and logged, by name; everything else must load: transformers' loading report (missing,
unexpected, mismatched, errors) must be empty, and then every tensor of the file is compared
with the loaded model's own (via transformers' ``revert_weight_conversion``, which maps its
parameter names back to the file's), so a weight that loads as zeros (the VideoMAE q/v bias
report under transformers 5) is refused too.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, _preview, file_sha256, freeze, read_checkpoint
from .registry import Extras, register_backbone

__all__ = ["HFEncoder", "load_hf"]

log = logging.getLogger(__name__)

# model_type -> (tower class, sub-config attribute or None, file-key prefix, prefix in the tower).
TOWERS = {
    "whisper": ("WhisperEncoder", None, ("model.encoder.", "encoder."), ""),
    "clap": ("ClapAudioModel", "audio_config", ("audio_model.",), ""),
    "clip": ("CLIPVisionModel", "vision_config", ("vision_model.",), "vision_model."),
    "siglip": ("SiglipVisionModel", "vision_config", ("vision_model.",), "vision_model."),
}
CLASSIFIER_SUFFIXES = ("ForAudioClassification", "ForVideoClassification", "ForSequenceClassification",
                       "ForImageClassification")
AUDIO_INPUTS = ("input_values", "input_features")
HIERARCHICAL = ("clap_audio_model",)   # block outputs of growing widths: no per-layer stack


def snapshot_files(folder) -> tuple[Path, list[Path]]:
    """(config.json, weight files) of a snapshot, or a one-line CheckpointError naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a snapshot folder (an hf checkpoint is the folder save_pretrained wrote)")
    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{folder}: no config.json in this snapshot folder")
    weights = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not weights:
        raise CheckpointError(f"{folder}: no model.safetensors (nor pytorch_model.bin) in this snapshot folder")
    return config, weights


def snapshot_sha256(folder) -> str:
    """sha256 over the snapshot's config and weight files (their names and contents)."""
    import hashlib

    config, weights = snapshot_files(folder)
    digest = hashlib.sha256()
    for path in (config, *weights):
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def read_weights(weights: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of the weight files: safetensors directly, ``.bin`` through read_checkpoint."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for path in weights:
        if path.suffix == ".safetensors":
            try:
                part = load_file(str(path))
            except Exception as exc:  # safetensors raises its own SafetensorError
                raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
        else:
            part = read_checkpoint(path)
        out.update(part)
    return out


def _class(name: str, model_type: str):
    """A transformers class by name: exported at the top level, or in the model type's module
    (WhisperEncoder is not exported)."""
    import importlib

    import transformers

    if hasattr(transformers, name):
        return getattr(transformers, name)
    return getattr(importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}"), name)


def _choose(config):
    """(model class, its config, file-key prefixes to keep, prefix they get in the model, kind)."""
    import transformers

    arch = (getattr(config, "architectures", None) or [""])[0]
    if arch.endswith(CLASSIFIER_SUFFIXES) and hasattr(transformers, arch):
        return getattr(transformers, arch), config, None, "", "classifier"
    if config.model_type in TOWERS:
        name, sub, prefixes, into = TOWERS[config.model_type]
        return _class(name, config.model_type), getattr(config, sub) if sub else config, prefixes, into, "tower"
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        cls = MODEL_MAPPING[type(config)]
    except KeyError:
        raise CheckpointError(f"transformers {transformers.__version__} has no base model for model_type "
                              f"{config.model_type!r}") from None
    return cls, config, (cls.base_model_prefix + ".",) if cls.base_model_prefix else None, "", "base"


def _select_keys(state: dict, prefixes, into: str, source: str) -> dict:
    """The file's keys for the built network (renamed from ``prefixes`` to ``into``); the rest
    are heads or other towers, dropped and logged by name."""
    if prefixes is None:
        return dict(state)
    if not any(k.startswith(p) for k in state for p in prefixes):
        return dict(state)          # saved from the base model itself: no prefix at all
    kept, dropped = {}, []
    for key, value in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            dropped.append(key)
        else:
            kept[into + key[len(prefix):]] = value
    if dropped:
        log.info("%s: dropping %d keys outside the encoder (%s)", source, len(dropped), _preview(sorted(dropped)))
    return kept


def load_strict_hf(cls, config, state: dict, source: str) -> nn.Module:
    """``cls.from_pretrained`` of ``state`` in float32, refused unless every weight loaded."""
    from transformers.core_model_loading import revert_weight_conversion

    try:
        # ignore_mismatched_sizes: a wrong shape comes back in the report (refused below, in one
        # line) instead of transformers' multi-line RuntimeError.
        model, info = cls.from_pretrained(None, config=config, state_dict=dict(state), dtype=torch.float32,
                                          output_loading_info=True, local_files_only=True,
                                          ignore_mismatched_sizes=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{source}: transformers cannot load it as {cls.__name__} "
                              f"({(str(exc).strip().splitlines() or [type(exc).__name__])[0]})") from None
    expected = model.state_dict()
    problems = []
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        as_filed = revert_weight_conversion(model, {k: expected[k] for k in missing if k in expected})
        problems.append(f"lacks {len(missing)} weight(s) the model needs: {_preview(sorted(as_filed) or missing)}")
    if info["unexpected_keys"]:
        problems.append(f"has {len(info['unexpected_keys'])} key(s) the model does not use: "
                        f"{_preview(sorted(info['unexpected_keys']))}")
    if info["mismatched_keys"]:
        shown = [f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in sorted(info["mismatched_keys"])]
        problems.append(f"{len(shown)} shape mismatch(es): {_preview(shown, 3)}")
    if info["error_msgs"]:
        problems.append("; ".join(str(m).splitlines()[0] for m in info["error_msgs"]))
    if not problems:
        # Independent of the report: every tensor of the file, where the model holds it.
        back = revert_weight_conversion(model, expected)
        lost = sorted(set(state) - set(back))
        if lost:
            problems.append(f"{len(lost)} key(s) of the file went nowhere: {_preview(lost)}")
        unequal = [k for k in state if k in back and not torch.equal(back[k], state[k].to(back[k].dtype))]
        if unequal:
            problems.append(f"{len(unequal)} weight(s) loaded with other values than the file's: {_preview(unequal)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {cls.__name__}: " + "; ".join(problems))
    return model


class HFEncoder(nn.Module):
    """A frozen transformers encoder with alphafuse's backbone interface (extract/registry.py).

    ``embed(**inputs)`` takes what ``processor`` returns; video models take ``pixel_values``
    (B, T, 3, H, W); image models (CLIP, SigLIP) take (B, 3, H, W), or (B, T, 3, H, W) and give
    one pooled vector per frame, (B, T, D): the frames are views.
    """

    def __init__(self, model: nn.Module, processor, kind: str, modality: str, per_frame: bool, folder: Path):
        super().__init__()
        self.model = model
        self.processor = processor
        self.kind = kind
        self.modality = modality
        self.per_frame = per_frame
        self.folder = folder
        self.model_type = model.config.model_type
        self._specs = None
        self._shapes = None

    # -- the Python API ------------------------------------------------------------------------

    def embed(self, *, layers: bool = False, **inputs) -> dict[str, torch.Tensor]:
        """{"pooled": (B, D) float32, "logits": (B, C) for a classifier, "tokens": last_hidden_state
        and, with ``layers``, "layers": (B, L, D) each block's output averaged over tokens}."""
        frames = None
        if self.per_frame:
            pixels = inputs["pixel_values"]
            if pixels.ndim == 5:
                frames = pixels.shape[1]
                inputs = {**inputs, "pixel_values": pixels.flatten(0, 1)}
        out = self.forward_features(inputs, layers)
        if frames is not None:
            out = {k: v.unflatten(0, (-1, frames)) for k, v in out.items()}
        return out

    def forward_features(self, inputs: dict, layers: bool = False) -> dict[str, torch.Tensor]:
        captured = {}
        handles = []
        if self.kind == "classifier":
            handles.append(self.model.classifier.register_forward_pre_hook(
                lambda mod, args: captured.__setitem__("pooled", args[0])))
            body = self._body()
            handles.append(body.register_forward_hook(
                lambda mod, args, output: captured.__setitem__("tokens", output[0])))
        try:
            output = self.model(**inputs, output_hidden_states=layers, return_dict=True)
        finally:
            for h in handles:
                h.remove()
        if self.kind == "classifier":
            out = {"pooled": captured["pooled"], "logits": output.logits, "tokens": captured["tokens"]}
        else:
            tokens = output.last_hidden_state
            pooler = getattr(output, "pooler_output", None)
            pooled = pooler if pooler is not None else self._masked_mean(tokens, inputs.get("attention_mask"))
            out = {"pooled": pooled, "tokens": tokens}
        if out["tokens"].ndim == 4:      # CLAP's audio tower: a (B, D, F, T) map -> (B, F * T, D) tokens
            out["tokens"] = out["tokens"].flatten(2).transpose(1, 2)
        if layers:
            hidden = output.hidden_states[1:]
            widths = sorted({h.shape[-1] for h in hidden})
            if len(widths) > 1 or hidden[0].ndim != 3:
                raise ValueError(f"layers: the {self.model_type} encoder is hierarchical (block outputs of widths "
                                 f"{', '.join(map(str, widths))}): no per-layer mean to stack")
            out["layers"] = torch.stack([h.mean(dim=1) for h in hidden], dim=1)
        return {k: v.float() for k, v in out.items()}

    def forward(self, **inputs) -> torch.Tensor:
        return self.embed(**inputs)["pooled"]

    def _has_layers(self) -> bool:
        """Whether every block's output has one width (not CLAP's hierarchical Swin)."""
        return self.model_type not in HIERARCHICAL

    def _body(self) -> nn.Module:
        """The encoder inside a classifier, whose first output is last_hidden_state."""
        body = self.model.base_model
        if body is self.model:       # WhisperForAudioClassification: base_model_prefix names no attribute
            body = getattr(self.model, "encoder", self.model)
        return body

    def _masked_mean(self, tokens: torch.Tensor, mask) -> torch.Tensor:
        if mask is None:
            return tokens.mean(dim=1)
        if mask.shape[1] != tokens.shape[1]:   # a sample mask -> the frames it covers (Wav2Vec2's rule)
            mask = self.model._get_feature_vector_attention_mask(tokens.shape[1], mask)
        mask = mask.to(tokens.dtype).unsqueeze(-1)
        return (tokens * mask).sum(dim=1) / mask.sum(dim=1)

    # -- what extraction asks of a backbone (see extract/registry.py) ----------------------------

    def _check(self, modality: str) -> None:
        if modality != self.modality:
            raise ValueError(f"hf snapshot {self.folder} is a {self.model_type} {self.modality} encoder: it cannot "
                             f"encode {modality} (give it as --{self.modality}-backbone hf "
                             f"--{self.modality}-checkpoint {self.folder})")

    def input_specs(self, modality: str, spatial_crops: int = 1) -> dict:
        from .hf_inputs import spec_for

        self._check(modality)
        if spatial_crops != 1:
            raise ValueError(f"spatial crops must be 1 for an hf backbone: its processor makes its one view, got "
                             f"{spatial_crops}")
        if self._specs is None:
            self._specs = {modality: spec_for(self.processor, modality, self.model.config,
                                              self.num_frames if modality == "video" else None)}
        return dict(self._specs)

    @property
    def num_frames(self) -> int:
        config = self.model.config
        return int(getattr(config, "num_frames", 0) or self.options.get("num_frames") or 8)

    def embedding_shapes(self, modality: str, extras: Extras = Extras()) -> dict:
        """Shapes from one probe forward on a processed blank input (cached)."""
        if self._shapes is None:
            spec = self.input_specs(modality)[modality]
            with torch.inference_mode():
                out = self.embed(layers=self._has_layers(), **spec.model_inputs(spec.blank()[None]))
            self._shapes = {k: tuple(v.shape[1:]) for k, v in out.items()}
        if extras.layers is not None and "layers" not in self._shapes:
            raise ValueError(f"layers: the {self.model_type} encoder is hierarchical: no per-layer mean to stack")
        shapes = {modality: self._shapes["pooled"]}
        if extras.tokens:
            shapes[f"{modality}_tokens"] = self._shapes["tokens"]
        if extras.layers is not None:
            per_layer = self._shapes["layers"]
            n = len(extras.layer_indices(per_layer[-2]))
            shapes[f"{modality}_layers"] = per_layer[:-2] + (n, per_layer[-1])
        if self.per_frame:
            views = self._shapes["pooled"][0]
            return {k: {"shape": list(v), "views": views} for k, v in shapes.items()}
        return shapes

    def extract(self, modality: str, inputs: dict, extras: Extras = Extras()) -> dict:
        """{modality: the spec's batched tensor} -> {modality: pooled, [modality_tokens,
        modality_layers]}: tokens are last_hidden_state, layers each chosen block's token mean."""
        spec = self.input_specs(modality)[modality]
        kwargs = spec.model_inputs(inputs[modality])
        out = self.embed(layers=extras.layers is not None, **kwargs)
        result = {modality: out["pooled"]}
        if extras.tokens:
            result[f"{modality}_tokens"] = out["tokens"]
        if extras.layers is not None:
            depth = out["layers"].shape[-2]
            result[f"{modality}_layers"] = out["layers"][..., list(extras.layer_indices(depth)), :]
        return result


def load_processor(folder: Path, modality: str):
    """The snapshot's own processor part for ``modality``, as its config files declare it."""
    import transformers

    video_json, json_path = folder / "video_preprocessor_config.json", folder / "preprocessor_config.json"
    if modality == "video" and video_json.is_file():
        return transformers.AutoVideoProcessor.from_pretrained(folder, local_files_only=True)
    if not json_path.is_file():
        raise CheckpointError(f"{folder}: no preprocessor_config.json in this snapshot folder (save the processor "
                              f"with save_pretrained beside the model)")
    declared = json.loads(json_path.read_text(encoding="utf-8"))
    if modality == "audio" or ("feature_extractor_type" in declared and "image_processor_type" not in declared):
        return transformers.AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    return transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)


def _modality(model: nn.Module) -> tuple[str, bool]:
    """(modality, per_frame) from what the network takes."""
    name = model.main_input_name
    if name in AUDIO_INPUTS:
        return "audio", False
    if name == "pixel_values":
        return "video", not getattr(model.config, "num_frames", None)
    raise CheckpointError(f"{model.config.model_type}: takes {name!r}, neither audio nor video")


@register_backbone("hf", modality="any",
                   help="any Hugging Face audio or video encoder from a local snapshot folder (checkpoint: DIR); "
                        "its classifier's input, or its pooler output, or its token mean")
def load_hf(checkpoint=None, num_frames: int = 8) -> HFEncoder:
    """A frozen, eval-mode transformers encoder from the snapshot folder ``checkpoint``.

    ``num_frames``: frames per clip for image encoders (CLIP, SigLIP); video models use their
    config's ``num_frames``.
    """
    import transformers

    if checkpoint is None:
        raise CheckpointError("the hf backbone needs a snapshot folder as its checkpoint (e.g. --video-checkpoint DIR "
                              "or --audio-checkpoint DIR)")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"hf option num_frames must be a positive integer, got {num_frames!r}")
    folder = Path(checkpoint).resolve()
    config_path, weights = snapshot_files(folder)
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, OSError, KeyError) as exc:
        raise CheckpointError(f"{config_path}: not a config transformers {transformers.__version__} reads "
                              f"({str(exc).splitlines()[0]})") from None
    cls, sub_config, prefixes, into, kind = _choose(config)
    source = str(weights[0]) if len(weights) == 1 else f"{folder} ({len(weights)} weight files)"
    state = _select_keys(read_weights(weights), prefixes, into, source)
    model = load_strict_hf(cls, sub_config, state, source)
    modality, per_frame = _modality(model)
    processor = load_processor(folder, modality)
    encoder = HFEncoder(model, processor, kind, modality, per_frame, folder)
    encoder.config = {"model": "hf", "model_type": config.model_type, "class": cls.__name__,
                      "snapshot": folder.name, "modality": modality,
                      "processor": type(processor).__name__}
    encoder.fingerprint = "sha256:" + snapshot_sha256(folder)
    encoder.checkpoint = str(folder)
    encoder.seed = None
    encoder.pretrained = True
    encoder.options = {"num_frames": num_frames}
    log.info("%s (%s, %s) loaded from %s", cls.__name__, model.config.model_type, modality, folder)
    return freeze(encoder)
