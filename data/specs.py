"""Input specs that are not a VideoConfig or an AudioConfig: the TSM and TSAM pipelines.

A spec says how one model input is made from a clip. VideoConfig and AudioConfig (one demux
pass for both, data/clip.py) cover TimeSformer, AST and CAV-MAE; TSM and TSAM extract frames
through FFmpeg filters of their own (data/tsn.py) and TSAM's audio is a log-mel image at the
file's own sample rate (data/tsam_audio.py), so their specs load their input themselves:
``load(path, clip_id, threads)`` returns the tensor (and, for audio, ``has_audio``).
Every spec's ``to_dict`` names its ``kind``, which a cache records and :func:`spec_from_dict`
reads back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch

from .audio import AudioConfig
from .tsam_audio import IMAGE_SIZE, load_tsam_spectrogram
from .tsn import decode_tsm_frames, load_tsam_frames, tsm_test_views
from .video_config import VideoConfig


class _Spec:
    kind: ClassVar[str]

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict):
        d = {k: v for k, v in d.items() if k != "kind"}
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{cls.__name__} has no field {', '.join(unknown)}")
        return cls(**d)


# TSM's multi-clip tests (ops/dataset.py _get_test_indices): twice_sample is 2 clips, dense 10.
TSM_CLIPS = {1: {}, 2: {"twice_sample": True}, 10: {"dense": True}}


@dataclass(frozen=True)
class TSMFrames(_Spec):
    """TSM's test input (data/tsn.py): one frame per segment, ImageNet-normalised, one centre
    crop or three full-resolution crops; ``temporal_views`` 1, 2 (``twice_sample``) or 10
    (``dense_sample``) clips. Views come temporal-major: (K * crops, 3, T, S, S)."""

    kind: ClassVar[str] = "tsm_frames"
    num_segments: int = 8
    test_crops: int = 1
    full_res: bool = False
    temporal_views: int = 1

    def __post_init__(self):
        if self.temporal_views not in TSM_CLIPS:
            raise ValueError(f"TSM's test takes 1, 2 (twice_sample) or 10 (dense_sample) clips, "
                             f"got temporal views {self.temporal_views!r}")

    @property
    def views(self) -> int:
        return self.temporal_views * self.test_crops

    @property
    def output_shape(self) -> tuple:
        size = 256 if self.full_res else 224
        one = (3, self.num_segments, size, size)
        return one if self.views == 1 else (self.views,) + one

    def load(self, path, clip_id: str, threads: int = 0) -> torch.Tensor:
        frames = decode_tsm_frames(path, self.num_segments, clip_id=clip_id, threads=threads,
                                   **TSM_CLIPS[self.temporal_views])
        k, t = self.temporal_views, self.num_segments
        clips = [tsm_test_views(frames[i * t:(i + 1) * t], test_crops=self.test_crops, full_res=self.full_res)
                 for i in range(k)]
        if self.views == 1:
            return clips[0]
        return torch.cat([c if self.test_crops > 1 else c[None] for c in clips])


@dataclass(frozen=True)
class TSAMFrames(_Spec):
    """TSAM's validation frames (data/tsn.py load_tsam_frames): [0, 1] RGB, 224 x 224."""

    kind: ClassVar[str] = "tsam_frames"
    num_segments: int = 16
    views: ClassVar[int] = 1

    @property
    def output_shape(self) -> tuple:
        return (3, self.num_segments, 224, 224)

    def load(self, path, clip_id: str, threads: int = 0) -> torch.Tensor:
        return load_tsam_frames(path, self.num_segments, clip_id=clip_id, threads=threads)


@dataclass(frozen=True)
class TSAMSpectrogram(_Spec):
    """TSAM's audio segment (data/tsam_audio.py): a (3, 224, 224) log-mel image, first channel."""

    kind: ClassVar[str] = "tsam_spectrogram"

    @property
    def output_shape(self) -> tuple:
        return (3, *IMAGE_SIZE)

    def load(self, path, clip_id: str, threads: int = 0) -> tuple[torch.Tensor, bool]:
        return load_tsam_spectrogram(path, clip_id)


SPECS = {cls.kind: cls for cls in (TSMFrames, TSAMFrames, TSAMSpectrogram)}


def _kinds() -> dict:
    """SPECS and the Hugging Face processor specs (data/hf_processor.py subclasses _Spec: imported
    here, when a cache is read, not at import time, which would be circular)."""
    from .hf_processor import HFAudio, HFFrames
    return {**SPECS, HFFrames.kind: HFFrames, HFAudio.kind: HFAudio}


def spec_from_dict(slot: str, d: dict):
    """The spec a cache recorded for input ``slot`` ("video" or "audio")."""
    if "kind" in d:
        try:
            return _kinds()[d["kind"]].from_dict(d)
        except KeyError:
            raise ValueError(f"unknown input spec kind {d['kind']!r}") from None
    return VideoConfig.from_dict(d) if slot == "video" else AudioConfig.from_dict(d)
