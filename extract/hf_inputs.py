"""Input specs for Hugging Face encoders (extract/hf.py's second module): the snapshot's own processor on alphafuse's decoding.

Video (``HFFrames``): ``num_frames`` frames picked by alphafuse's uniform rule (data/sampling.py)
from the decoded RGB24 frames, then the processor called on that list of (H, W, 3) uint8
frames (its resize, crop, rescale and statistics): ``pixel_values`` (T, 3, H, W).

Audio (``HFAudio``): the clip's audio through the same path as AST (data/audio.py
``decode_audio``: FFmpeg's default down-mix to 16-bit mono at the processor's sampling rate,
``int16 / 32768``), then the processor called on that waveform. Processors that keep the
waveform's length (Wav2Vec2's) are asked to pad or cut to ``max_samples`` so that every clip
has one shape; the others (AST's, Whisper's, CLAP's) fix their own length.

A processor may return several tensors (``input_features`` and ``is_longer`` for CLAP,
``input_values`` and ``attention_mask`` for Wav2Vec2 with masks): the spec packs them into
one flat float32 row (every value is exactly representable: floats, 0/1 masks) because a batch
slot of the extraction pipeline is one tensor, and ``model_inputs`` unpacks a batch of rows
into the processor's keys and dtypes. The spec records the processor's class and its full
configuration (``to_dict``), so a cache rebuilds the exact processor without the snapshot.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from alphafuse.data._container import clip_id_for, open_input
from alphafuse.data.errors import ClipError

from .registry import InputSpec, register_spec

# Feature extractors whose output is as long as the waveform: asked for max_samples samples.
VARIABLE_LENGTH = ("Wav2Vec2FeatureExtractor",)

_DTYPES = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


def _processor(class_name: str, config: str):
    import transformers

    cls = getattr(transformers, class_name, None)
    if cls is None or not hasattr(cls, "from_dict"):
        raise ValueError(f"transformers {transformers.__version__} has no processor class {class_name!r}")
    return cls.from_dict(json.loads(config))


def _config_text(processor) -> str:
    d = processor.to_dict()
    d.pop("processor_class", None)
    return json.dumps(d, sort_keys=True, default=str)


@register_spec
@dataclass(frozen=True)
class HFFrames(InputSpec):
    """``num_frames`` uniformly sampled RGB frames through the snapshot's image or video processor."""

    kind: ClassVar[str] = "hf_frames"
    processor_class: str
    processor_config: str          # the processor's to_dict(), as sorted JSON
    num_frames: int
    frame_shape: tuple = ()        # (3, H, W) the processor makes, found by a probe
    views: ClassVar[int] = 1

    def __post_init__(self):
        object.__setattr__(self, "frame_shape", tuple(int(x) for x in self.frame_shape))
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"HFFrames.num_frames must be a positive integer, got {self.num_frames!r}")

    @property
    def output_shape(self) -> tuple:
        return (self.num_frames, *self.frame_shape)

    @property
    def processor(self):
        return _cached_processor(self.processor_class, self.processor_config)

    def process(self, frames: list[np.ndarray]) -> torch.Tensor:
        """Decoded (H, W, 3) uint8 frames -> pixel_values (T, 3, H, W) float32."""
        pixels = self.processor(list(frames), return_tensors="pt")["pixel_values"]
        # A video processor returns one video (1, T, 3, H, W); an image processor T images (T, 3, H, W).
        return (pixels[0] if pixels.ndim == 5 else pixels).float()

    def load(self, path, clip_id: str, threads: int = 0) -> torch.Tensor:
        return self.process(decode_rgb_frames(path, self.num_frames, clip_id, threads))

    def blank(self) -> torch.Tensor:
        return self.process([np.zeros((64, 64, 3), np.uint8)] * self.num_frames)

    def model_inputs(self, batch: torch.Tensor) -> dict:
        return {"pixel_values": batch}


@register_spec
@dataclass(frozen=True)
class HFAudio(InputSpec):
    """The AST-path waveform at ``sampling_rate`` through the snapshot's feature extractor."""

    kind: ClassVar[str] = "hf_audio"
    processor_class: str
    processor_config: str
    sampling_rate: int
    max_samples: int | None = None   # pad/cut length for length-keeping extractors
    layout: tuple = ()               # ((key, shape, dtype), ...) of the packed row, found by a probe
    downmix: str = "ffmpeg"

    def __post_init__(self):
        object.__setattr__(self, "layout", tuple((str(k), tuple(int(s) for s in shape), str(dt))
                                                 for k, shape, dt in self.layout))

    @property
    def output_shape(self) -> tuple:
        return (sum(int(np.prod(shape)) for _, shape, _ in self.layout),)

    @property
    def processor(self):
        return _cached_processor(self.processor_class, self.processor_config)

    def process_dict(self, waveform) -> dict:
        """A mono waveform (n,) -> the processor's output for one clip, batch axis dropped."""
        wave = np.asarray(torch.as_tensor(waveform, dtype=torch.float32).reshape(-1))
        kwargs = {}
        if self.max_samples is not None:
            kwargs = dict(padding="max_length", max_length=self.max_samples, truncation=True)
        # CLAP's extractor crops audio longer than its window at random (np.random, rand_trunc and
        # fusion): a fixed seed per call makes a clip's input, and so its cached embedding, repeatable.
        state = np.random.get_state()
        np.random.seed(0)
        try:
            out = self.processor(wave, sampling_rate=self.sampling_rate, return_tensors="pt", **kwargs)
        finally:
            np.random.set_state(state)
        return {k: torch.as_tensor(v)[0] for k, v in out.items()}

    def pack(self, outputs: dict) -> torch.Tensor:
        keys = [k for k, _, _ in self.layout]
        if sorted(outputs) != sorted(keys):
            raise ValueError(f"the processor gave {', '.join(sorted(outputs))}, the spec records {', '.join(keys)}")
        return torch.cat([outputs[k].reshape(-1).to(torch.float32) for k in keys])

    def process(self, waveform) -> torch.Tensor:
        return self.pack(self.process_dict(waveform))

    def load(self, path, clip_id: str, threads: int = 0) -> tuple[torch.Tensor, bool]:
        from alphafuse.data.audio import decode_audio

        waveform, has_audio = decode_audio(path, self.sampling_rate, clip_id, self.downmix)
        return self.process(waveform), has_audio

    def blank(self) -> torch.Tensor:
        return self.process(np.zeros(self.sampling_rate, np.float32))

    def model_inputs(self, batch: torch.Tensor) -> dict:
        """(B, packed) -> {processor key: (B, *shape) in its dtype}."""
        out, start = {}, 0
        for key, shape, dtype in self.layout:
            n = int(np.prod(shape))
            out[key] = batch[:, start:start + n].reshape(-1, *shape).to(_DTYPES[dtype])
            start += n
        return out


_PROCESSORS: dict = {}


def _cached_processor(class_name: str, config: str):
    key = (class_name, config)
    if key not in _PROCESSORS:
        _PROCESSORS[key] = _processor(class_name, config)
    return _PROCESSORS[key]


def spec_for(processor, modality: str, model_config, num_frames: int | None = None, max_seconds: float = 10.0):
    """The spec of a loaded snapshot's processor; shapes found by running it once on a blank input."""
    name, text = type(processor).__name__, _config_text(processor)
    _PROCESSORS[(name, text)] = processor
    if modality == "video":
        spec = HFFrames(name, text, int(num_frames))
        return HFFrames(name, text, int(num_frames), tuple(spec.blank().shape[1:]))
    rate = int(getattr(processor, "sampling_rate", 16000))
    max_samples = int(round(max_seconds * rate)) if name in VARIABLE_LENGTH else None
    spec = HFAudio(name, text, rate, max_samples)
    outputs = spec.process_dict(np.zeros(rate, np.float32))
    layout = tuple((k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in sorted(outputs.items()))
    bad = [f"{k}: {dt}" for k, _, dt in layout if dt not in _DTYPES]
    if bad:
        raise ValueError(f"{name} returns inputs of a kind alphafuse cannot batch ({', '.join(bad)})")
    return HFAudio(name, text, rate, max_samples, layout)


def decode_rgb_frames(path, num_frames: int, clip_id: str | None = None, threads: int = 0) -> list[np.ndarray]:
    """``num_frames`` frames of the clip as (H, W, 3) uint8 RGB, by alphafuse's uniform sampling
    (the same decoding and frame choice as every VideoConfig backbone, without its resize)."""
    import av

    from alphafuse.data._container import av_reason
    from alphafuse.data.video import PacketIndex, decode_sampled_frames, demux_video, open_video_stream
    from alphafuse.data.video_config import VideoConfig

    clip_id = clip_id_for(path, clip_id)

    def convert(frame):
        try:
            return frame.to_ndarray(format="rgb24")
        except (av.FFmpegError, ValueError) as exc:
            raise ClipError(clip_id, f"cannot convert video frames to RGB: {av_reason(exc)}") from None

    with open_input(path, clip_id) as container:
        stream = open_video_stream(container, clip_id)
        index = demux_video(container, stream, PacketIndex())
        return decode_sampled_frames(Path(path), stream, index, VideoConfig(num_frames=num_frames), clip_id,
                                     threads, convert=convert)
