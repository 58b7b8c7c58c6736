"""TSAM, Temporal Shift with Audio Modality (aav-antonov/TSAM), the frozen audio-visual backbone.

One ResNet-50 sees 16 video segments and, as a 17th segment, a 3-channel log-mel image of the
clip's audio (``lib/model/prepare_input.py`` ``x_input`` concatenates them). Shifts follow
``lib/model/temporal_fusion.py``: in every stage (``make_Shift``: children 4..7 of the ResNet) the
blocks ``i`` with ``i % n_insert == m_insert`` get ``conv1`` wrapped in ``TemporalShift(conv1,
n_segment=17, n_segment_shifted=16, f_div, shift_depth)``: with ``f = (C // f_div) // shift_depth``,
for each distance ``l = 1..shift_depth`` one group of ``f`` channels moves ``l`` segments back and
the next ``f`` ``l`` segments forward, among the 16 video segments only; where nothing arrives the
original values stay (TSM writes zeros), and the audio segment is never shifted. No input
normalisation anywhere: frames are ``ToTensor`` output in [0, 1], the spectrogram raw log-mel.
``lib/model/model.py`` ``VCM.forward``: ``last_fc`` over the mean of the 17 segments' features.

Checkpoints (``lib/utils/saveloadmodels.py`` ``save_timepoint``): ``{'data_state',
'model_state': {'nn_input': {}, 'nn_backbone': BackBone.state_dict(), 'last_fc': Linear.state_dict()},
'optimizer_state_dict'}``; shifted convs are ``base_model.layerS.B.conv1.layer.weight``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from alphafuse.data.errors import one_line
from alphafuse.data.files import read_regular_text

from .checkpoint import build_backbone, strip_prefixes
from .registry import Extras, register_backbone
from .tsam_inputs import TSAMFrames, TSAMSpectrogram
from .tsm import ARCHS, ResNet, check_frames, segments_to_batch, temporal_shift

__all__ = ["TSAM", "load_tsam", "tsam_options_from_config"]

log = logging.getLogger(__name__)
KINETICS_CLASSES = 400

# The reference's deterministic pipeline: MmDataSet in mode "validation", the per-epoch validation
# of training (its published 10-clip test, main.py --validate -> run_MultiClip, instead samples
# frames and crops at random and sums the logits of 10 passes). extract/tsam_inputs.py (its specs
# and audio) and data/tsn.py (frame decoding) implement it.
PREPROCESSING = {
    "frames": {
        "num_frames": "num_segments (16), one frame each (main.py sets dataset k_frames = 1)",
        "source": {"fps": 10, "height": 256, "files": "000001.jpg, ... (1-based)",
                   "reference": "video2frames.py run_frames (ffmpeg -vf \"scale=-1:256,fps=10\" -q:v 0)"},
        "sampling": {"rule": "1 + int(tick / 2 + tick * k), tick = n / num_segments, clamped to the clip",
                     "reference": "lib/dataset/video.py sample_indices_validation",
                     "implementation": "alphafuse.data.tsn.tsam_validation_indices"},
        "scale": "uint8 / 255 (lib/dataset/video.py load_image: T.ToTensor), no mean/std anywhere",
        "crop": {"size": "the short side, centred",
                 "reference": "lib/dataset/video.py validation_transform(crop='central'): T.CenterCrop((S, S))"},
        "resize": {"size": [224, 224], "interpolation": "bilinear, antialiased (torchvision T.Resize on tensors)"},
        "implementation": "alphafuse.data.tsn.load_tsam_frames (decode_tsam_frames, then tsam_frame_tensor)",
    },
    "audio": {
        "source": {"reference": "video2frames.py run_audio (ffmpeg -i clip.mp4 clip.wav: 16-bit PCM), "
                                "torchaudio.load"},
        "sample_rate": "the file's own (no resampling)",
        "channels": "the first channel only, no down-mix (lib/dataset/audio.py get_audio_x: waveform[0])",
        "segments": "one: the whole waveform (wafeform_to_split, num_segments = m_segments = 1)",
        "window_ms": [25, 50, 100], "hop_ms": [10, 25, 50], "n_fft": 4800, "n_mels": 224,
        "mel": "torchaudio MelSpectrogram: power 2, centred reflect-padded frames, periodic Hann, HTK scale "
               "0 .. sr / 2, no filter norm",
        "log": "log(mel + 1e-6)",
        "resize": {"size": [224, 224], "interpolation": "bilinear, antialiased (torchvision T.Resize on tensors)"},
        "reference": "lib/dataset/audio.py wafeform_to_spectrogram_torch; config/kinetics400_config.json "
                     "audio_image_param",
        "implementation": "alphafuse.extract.tsam_inputs.load_tsam_spectrogram (decode_first_channel, then tsam_spectrogram)",
    },
}


class SegmentShift(nn.Module):
    """TSAM's wrapper around a block's ``conv1`` (key ``conv1.layer.*``): shift among the video
    segments with depth, ends keep their values, then convolve."""

    def __init__(self, layer: nn.Conv2d, n_segment: int, n_segment_shifted: int, f_div: int, shift_depth: int):
        super().__init__()
        self.layer = layer
        self.n_segment, self.n_shift, self.shift_depth = n_segment, n_segment_shifted, shift_depth
        self.fold = (layer.in_channels // f_div) // shift_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(temporal_shift(x, self.n_segment, self.fold, self.shift_depth, self.n_shift,
                                         zero_ends=False))


class TSAM(nn.Module):
    """Video segments and one audio segment through one shifted ResNet; ``last_fc`` on their mean."""

    def __init__(self, num_segments: int = 16, num_classes: int = KINETICS_CLASSES, shift_depth: int = 4,
                 f_div: int = 4, n_insert: int = 2, m_insert: int = 0, width: int = 64,
                 layers: tuple[int, ...] = (3, 4, 6, 3)):
        super().__init__()
        self.num_segments = num_segments
        self.base_model = ResNet(width, layers)
        for stage in self.base_model.stages():           # make_Shift / shift_block
            for i, block in enumerate(stage):
                if i % n_insert == m_insert:
                    block.conv1 = SegmentShift(block.conv1, num_segments + 1, num_segments, f_div, shift_depth)
        self.embed_dim = self.num_features = self.base_model.num_features
        self.last_fc = nn.Linear(self.num_features, num_classes)

    @property
    def num_classes(self) -> int:
        return self.last_fc.out_features

    def reset_classifier(self, num_classes: int) -> None:
        self.last_fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, frames: torch.Tensor, spectrogram: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, T, H, W) in [0, 1], spectrogram (B, 3, H, W) -> features (B, T + 1, D):
        T video segments, then the audio segment (``x_input`` puts it last)."""
        check_frames(frames, self.num_segments, "TSAM")
        b = frames.shape[0]
        if spectrogram.ndim != 4 or spectrogram.shape[0] != b or spectrogram.shape[1:] != (3, *frames.shape[-2:]):
            raise ValueError(f"TSAM expects a spectrogram of shape ({b}, 3, {frames.shape[-2]}, {frames.shape[-1]}) "
                             f"to go with frames {tuple(frames.shape)}, got {tuple(spectrogram.shape)}")
        segments = torch.cat((frames.transpose(1, 2), spectrogram.to(frames.dtype).unsqueeze(1)), dim=1)
        x = self.base_model(segments_to_batch(segments, self))      # (B * (T + 1), D)
        return x.view(b, self.num_segments + 1, -1)

    def embed(self, frames: torch.Tensor, spectrogram: torch.Tensor) -> dict[str, torch.Tensor]:
        """``video``: mean of the video segments' features; ``audio``: the audio segment's (B, D) each."""
        x = self.forward_features(frames, spectrogram)
        return {"video": x[:, :self.num_segments].mean(dim=1), "audio": x[:, self.num_segments]}

    def classify_from_embeddings(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """``last_fc`` over the mean of all T + 1 segment features, from the cached embeddings."""
        t = self.num_segments
        return self.last_fc((t * video + audio) / (t + 1))

    def classify(self, frames: torch.Tensor, spectrogram: torch.Tensor) -> torch.Tensor:
        """(B, classes): VCM.forward's logits (computed through the embeddings, so that a cache
        of ``embed`` gives the same numbers)."""
        return self.classify_from_embeddings(**self.embed(frames, spectrogram))

    def forward(self, frames: torch.Tensor, spectrogram: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.embed(frames, spectrogram)

    # -- what extraction asks of a backbone (see extract/registry.py) --------------------------

    def embedding_shapes(self, modality: str = "audiovisual", extras: Extras = Extras()) -> dict:
        """``video`` and ``audio`` (D,) and, for a checkpoint, its classifier's ``logits``."""
        if modality != "audiovisual":
            raise ValueError("the tsam backbone encodes both modalities in one pass; use it as the one "
                             "audio-visual backbone")
        if extras.tokens or extras.layers is not None:
            raise ValueError("the tsam backbone caches no tokens or layers; extract it without them")
        shapes = {"video": (self.embed_dim,), "audio": (self.embed_dim,)}
        if self.pretrained:
            shapes["logits"] = {"shape": [self.num_classes], "label_space": "backbone"}
        return shapes

    def input_specs(self, modality: str = "audiovisual") -> dict:
        """:data:`PREPROCESSING` as extract/tsam_inputs.py's TSAMFrames and TSAMSpectrogram."""
        self.embedding_shapes(modality)
        return {"video": TSAMFrames(num_segments=self.num_segments), "audio": TSAMSpectrogram()}

    def extract(self, modality: str, inputs: dict, extras: Extras = Extras()) -> dict:
        out = self.embed(inputs["video"], inputs["audio"])
        if self.pretrained:
            out["logits"] = self.classify_from_embeddings(out["video"], out["audio"])
        return out


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_filter_fn(state_dict: dict, model: TSAM) -> dict:
    """Adapt a TSAM state dict (its per-layer parts joined by extract.checkpoint) to ``model``.

    Removes ``module.`` (a whole-model DataParallel state dict) and the ``nn_backbone.`` layer
    name; ``last_fc`` keeps its name. The classifier is resized to the checkpoint's class count.
    """
    sd = strip_prefixes(state_dict, ("module.", "nn_backbone."))
    head = sd.get("last_fc.weight")
    if head is not None and head.ndim == 2 and head.shape[0] != model.num_classes:
        model.reset_classifier(head.shape[0])
    return sd


def _hint(sd: dict, options: dict) -> str:
    if any(k.startswith("base_model.") and ".conv1.net." in k for k in sd) or "new_fc.weight" in sd:
        return " (it looks like a TSM checkpoint: use load_tsm)"
    if any(k.startswith(("blocks.", "cls_token", "model.blocks.", "v.blocks.")) for k in sd):
        return " (it looks like a transformer checkpoint, not a TSAM ResNet)"
    shifted = sorted({k.split(".conv1.layer.")[0] for k in sd if ".conv1.layer." in k})
    if shifted:
        return (f" (the checkpoint shifts blocks {', '.join(s.removeprefix('base_model.') for s in shifted[:6])}"
                f"{', ...' if len(shifted) > 6 else ''}: check n_insert/m_insert, here "
                f"n_insert={options['n_insert']}, m_insert={options['m_insert']})")
    return ""


# ----------------------------------------------------------------------------- configs and loading

# config/*.json keys with no effect on a frozen model's numbers: ImageNet initialisation,
# dropout (identity in eval mode), and shift_temporal.status, which BackBone never reads (it
# inserts the shift whenever there are video segments).
_INERT = {"model": {"pretrain", "dropout", "num_class"}, "shift_temporal": {"status"}}
_MAPPED = {"model": {"video_segments": "num_segments", "audio_segments": None, "arch": "arch"},
           "shift_temporal": {"f_div": "f_div", "shift_depth": "shift_depth", "n_insert": "n_insert",
                              "m_insert": "m_insert"}}
_ARCH_NAMES = {"resnet50": "base", "resnet50_timm": "base"}   # timm's and torchvision's resnet50 compute the same


def tsam_options_from_config(path_or_dict) -> dict:
    """load_tsam options from a TSAM config (``config/*.json``, a path or the loaded dict).

    Maps ``model`` (video_segments -> num_segments; arch resnet50 / resnet50_timm -> "base";
    audio_segments must be 1, alphafuse's TSAM always has the audio segment) and
    ``shift_temporal`` (f_div, shift_depth, n_insert, m_insert). Keys of these two sections that
    the reference does not know raise a ValueError naming them.
    """
    where = "TSAM config"
    if isinstance(path_or_dict, (str, Path)):
        where = f"{path_or_dict}: TSAM config"
        text = read_regular_text(path_or_dict, "TSAM JSON config")
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path_or_dict}: not a readable TSAM JSON config ({one_line(exc)})") from None
    else:
        config = path_or_dict
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        found = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{where} needs a 'model' section (a JSON object), got {found!r}")
    options = {}
    for section in ("model", "shift_temporal"):
        values = config.get(section, {})
        if not isinstance(values, dict):
            raise ValueError(f"{where} section {section!r} must be a JSON object, got {values!r}")
        unknown = sorted(set(values) - set(_MAPPED[section]) - _INERT[section])
        if unknown:
            raise ValueError(f"{where} section {section!r} has unknown keys {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(set(_MAPPED[section]) | _INERT[section]))}")
        for key, option in _MAPPED[section].items():
            if key in values and option is not None:
                options[option] = values[key]
    audio = config["model"].get("audio_segments", 1)
    if audio != 1:
        raise ValueError(f"{where} model.audio_segments must be 1 (the audio-visual model), got {audio!r}")
    if "arch" in options:
        if not isinstance(options["arch"], str) or options["arch"] not in _ARCH_NAMES:
            raise ValueError(f"{where} model.arch must be one of {', '.join(_ARCH_NAMES)}, got {options['arch']!r}")
        options["arch"] = _ARCH_NAMES[options["arch"]]
    return options


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        rule = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {rule}, got {value!r}")
    return value


@register_backbone("tsam", modality="audiovisual", config_reader=tsam_options_from_config,
                   help="TSAM ResNet-50 (aav-antonov/TSAM): video segment mean and audio segment features, 2048-d each")
def load_tsam(checkpoint=None, num_segments: int = 16, shift_depth: int = 4, f_div: int = 4,
              n_insert: int = 2, m_insert: int = 0, arch: str = "base", seed: int = 0) -> TSAM:
    """A frozen, eval-mode TSAM: ``embed(frames, spectrogram)`` gives ``video`` and ``audio`` (B, 2048).

    ``checkpoint``: a TSAM ``.ckpt.pth.tar`` (``resnet50_kinetics400.ckpt.pth.tar``; the layout of
    ``lib/utils/saveloadmodels.py``) or a plain state dict file; ``None`` gives random weights from
    ``seed`` (with a warning). The options are those of config/kinetics400_config.json (see
    :func:`tsam_options_from_config`). ``arch="tiny"``: a 16-wide, 2-per-stage ResNet for tests.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    _check_int("num_segments", num_segments, 1)
    _check_int("shift_depth", shift_depth, 1, num_segments)  # the reference's slices break beyond
    _check_int("f_div", f_div, 1)
    _check_int("n_insert", n_insert, 1)
    _check_int("m_insert", m_insert, 0, n_insert - 1)
    options = dict(num_segments=num_segments, shift_depth=shift_depth, f_div=f_div, n_insert=n_insert,
                   m_insert=m_insert)
    config = dict(model="tsam", arch=arch, audio_segments=1, **options, **ARCHS[arch])
    name = f"TSAM ({arch})"

    def make():
        return TSAM(num_classes=KINETICS_CLASSES, **options, **ARCHS[arch])

    # TSAM's .ckpt.pth.tar nests one state dict per layer under model_state ({"nn_backbone": ...,
    # "last_fc": ...}); extract.checkpoint.unwrap_state_dict joins them as "<layer>.<key>".
    model = build_backbone(make, name, config, checkpoint, seed, checkpoint_filter_fn,
                           hint_fn=lambda sd: _hint(sd, options))
    model.config["num_classes"] = model.num_classes
    return model.to(memory_format=torch.channels_last)   # faster on CPU: see extract.tsm.memory_format
