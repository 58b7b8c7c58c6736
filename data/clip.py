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


def load_inputs(path: str | Path, video_spec, audio_spec, clip_id: str | None = None, *,
                threads: int = 0) -> LoadedClip:
    """One clip's model inputs for any specs: one demux pass for a VideoConfig and an
    AudioConfig (load_clip), else each spec that loads its own input (a family's registered
    spec, extract/registry.py register_spec) reads the file itself. Raises ClipError for a bad clip."""
    from .audio import load_fbank
    from .video import load_video

    clip_id = clip_id_for(path, clip_id)
    if isinstance(video_spec, VideoConfig) and isinstance(audio_spec, AudioConfig):
        return load_clip(path, video_spec, audio_spec, clip_id, threads=threads)
    video = (video_spec.load(path, clip_id, threads) if hasattr(video_spec, "load")
             else load_video(path, video_spec, clip_id, threads=threads))
    if hasattr(audio_spec, "load"):
        audio, has_audio = audio_spec.load(path, clip_id)
    else:
        audio, has_audio = load_fbank(path, audio_spec, clip_id)
    return LoadedClip(video, audio, has_audio)


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
