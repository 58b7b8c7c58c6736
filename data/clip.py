"""Both modalities of one clip from a single open and a single demux pass (what the Dataset uses).

Equivalent to ``load_video`` + ``load_fbank`` (the tests check it), but the file is opened and
read once: audio packets are decoded while the video packets are indexed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ._container import clip_id_for, find_audio_stream, open_input
from .audio import AudioAccumulator, AudioConfig, finish_audio
from .video import (PacketIndex, VideoConfig, assemble_views, decode_sampled_frames, demux_video,
                    open_video_stream)


@dataclass
class LoadedClip:
    video: torch.Tensor      # (3, T, S, S) or (3 views, 3, T, S, S)
    fbank: torch.Tensor      # the audio spec's features: (target_length, num_mel_bins) for a fbank
    has_audio: bool


def load_clip(path: str | Path, video_cfg: VideoConfig = VideoConfig(),
              audio_cfg: AudioConfig = AudioConfig(), clip_id: str | None = None,
              *, threads: int = 0) -> LoadedClip:
    """Video tensor, fbank and has_audio of one clip. Raises ClipError for a bad clip."""
    clip_id = clip_id_for(path, clip_id)
    path = Path(path)
    with open_input(path, clip_id) as container:
        vstream = open_video_stream(container, clip_id)
        astream = find_audio_stream(container)
        audio = (AudioAccumulator(astream, audio_cfg.sample_rate, audio_cfg.downmix)
                 if astream is not None else None)
        index = demux_video(container, vstream, PacketIndex(),
                            on_other=audio.feed if audio is not None else None,
                            other_streams=[astream] if astream is not None else [])
        views = decode_sampled_frames(path, vstream, index, video_cfg, clip_id, threads)
        waveform, has_audio = finish_audio(container, audio, audio_cfg.sample_rate, clip_id)
    return LoadedClip(assemble_views(views, video_cfg), audio_cfg.features(waveform), has_audio)
