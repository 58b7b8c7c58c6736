"""data/: manifests -> decoding -> model-ready tensors (the CPU side of feature extraction).

Everything here is picklable and holds no open file between calls, so a ClipDataset can be
handed to DataLoader workers.
"""
from .audio import AudioConfig, decode_audio, fbank_from_waveform, load_fbank
from .clip import LoadedClip, load_clip, load_inputs
from .dataset import ClipDataset, collate_clips
from .errors import ClipError
from .manifest import Clip, Manifest, read_manifest
from .sampling import register_sampling, sample_frames
from .video import VideoConfig, load_video, preprocess_frames, sample_indices

__all__ = [
    "AudioConfig", "Clip", "ClipDataset", "ClipError", "LoadedClip", "Manifest", "VideoConfig",
    "collate_clips", "decode_audio", "fbank_from_waveform", "load_clip", "load_fbank", "load_inputs",
    "load_video", "preprocess_frames", "read_manifest", "register_sampling", "sample_frames",
    "sample_indices",
]
