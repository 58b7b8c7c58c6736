"""TSAM's inputs (the preprocessing half of the tsam family, beside extract/tsam.py, which would
pass ~400 lines with it): the input specs :class:`TSAMFrames` (frames decoded by data/tsn.py's
FFmpeg-filter extraction) and :class:`TSAMSpectrogram`, and the audio segment below.

TSAM's audio segment: a 3-channel log-mel image of the clip's sound (aav-antonov/TSAM).

The reference (``video2frames.py`` ``run_audio``, then ``lib/dataset/audio.py`` ``get_audio_x``
in validation mode, config/kinetics400_config.json ``audio_image_param``):

1. ``ffmpeg -i clip.mp4 clip.wav``: 16-bit PCM at the stream's own sample rate and channels;
   ``torchaudio.load`` reads it back as ``int16 / 32768``.
2. ``waveform[0]``: the FIRST channel only (no down-mix), at that sample rate (no resampling).
3. ``wafeform_to_split`` (num_segments = m_segments = 1: the whole waveform), then for each of
   three (window, hop) pairs, 25/10, 50/25 and 100/50 ms: ``torchaudio.transforms.MelSpectrogram(
   sample_rate=sr, n_fft=4800, win_length=round(w * sr / 1000), hop_length=round(h * sr / 1000),
   n_mels=224)`` (power 2, centred frames with reflect padding, periodic Hann window zero-padded
   to 4800, HTK mel scale from 0 to sr / 2, no filter normalisation), ``log(mel + 1e-6)``, and
   ``torchvision.transforms.Resize((224, 224))`` of the (1, 224, frames) image (bilinear, with
   antialiasing: torchvision's default for tensors since 0.17; older releases did not antialias
   tensors, which changes the 25/10 ms channel, downsampled ~4.5x in time for a 10-s clip).
   The three images are the three channels.

Step 1 is done with PyAV: the first audio stream is decoded and converted to interleaved 16-bit
by libswresample at its own rate and layout (a WAV file's sample format), which is the conversion the ffmpeg command line makes
for a WAV file, then divided by 32768. ``round`` is Python's (half to even), as in the reference.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import av
import numpy as np
import torch
import torchaudio
import torchvision.transforms.functional as TF

from alphafuse.data._container import av_reason, clip_id_for, duration_seconds, find_audio_stream, open_input
from alphafuse.data.colour import check_yuv_matrix
from alphafuse.data.errors import ClipError
from alphafuse.data.tsn import load_tsam_frames

from .registry import InputSpec, register_spec

__all__ = ["TSAMFrames", "TSAMSpectrogram", "load_tsam_spectrogram", "tsam_spectrogram"]

log = logging.getLogger(__name__)

WINDOW_MS = (25, 50, 100)
HOP_MS = (10, 25, 50)
N_MELS = 224
N_FFT = 4800
EPS = 1e-6
IMAGE_SIZE = (224, 224)
FALLBACK_DURATION_S = 10.0
SILENCE_RATE = 44100


def tsam_waveform_splits(num_samples: int, num_segments: int = 1, m_segments: int = 1) -> list[tuple[int, int]]:
    """``wafeform_to_split``: ``num_segments`` windows of ``x = m * S // (m * n + 1 - n)`` samples,
    ``x - x // m`` apart ((0, S) for the published configs' n = m = 1)."""
    n, m = int(num_segments), int(m_segments)
    if n < 1 or m < 1:
        raise ValueError(f"num_segments and m_segments must be positive, got {num_segments!r}, {m_segments!r}")
    x = int(m * num_samples // (m * n + 1 - n))
    y = int(x // m)
    return [(i * x - i * y, i * x - i * y + x) for i in range(n)]


@functools.lru_cache(maxsize=8)
def _mel_transform(sample_rate: int, win_length: int, hop_length: int, n_mels: int):
    return torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=N_FFT, win_length=win_length,
                                                hop_length=hop_length, n_mels=n_mels)


def tsam_spectrogram(waveform, sample_rate: int, window_ms: Sequence[float] = WINDOW_MS,
                     hop_ms: Sequence[float] = HOP_MS, n_mels: int = N_MELS, eps: float = EPS,
                     size: tuple[int, int] = IMAGE_SIZE, num_segments: int = 1, m_segments: int = 1) -> torch.Tensor:
    """``wafeform_to_spectrogram_torch`` of a 1-D waveform: float32 (channels, H, W) for one
    segment (the reference squeezes it), else (num_segments, channels, H, W)."""
    wave = torch.as_tensor(np.asarray(waveform, dtype=np.float32) if not torch.is_tensor(waveform) else waveform,
                           dtype=torch.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D waveform (one channel), got shape {tuple(wave.shape)}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if len(window_ms) != len(hop_ms):
        raise ValueError(f"window_ms and hop_ms need one value per channel, got {window_ms!r}, {hop_ms!r}")
    lengths = [(int(round(w * sample_rate / 1000)), int(round(h * sample_rate / 1000)))
               for w, h in zip(window_ms, hop_ms)]
    for win, hop in lengths:
        if not 1 <= win <= N_FFT or hop < 1:
            raise ValueError(f"a {win}-sample window does not fit n_fft={N_FFT} at sample_rate={sample_rate} "
                             "(the reference's fixed n_fft allows at most 48 kHz with a 100 ms window)")
    splits = tsam_waveform_splits(wave.shape[0], num_segments, m_segments)
    if any(e - s <= N_FFT // 2 for s, e in splits):
        raise ValueError(f"a waveform of {wave.shape[0]} samples is too short: each segment needs more than "
                         f"{N_FFT // 2} samples for the centred {N_FFT}-point frames")
    out = torch.zeros((len(splits), len(lengths), *size))
    for j, (s, e) in enumerate(splits):
        for i, (win, hop) in enumerate(lengths):
            mel = _mel_transform(int(sample_rate), win, hop, int(n_mels))(wave[s:e])   # (n_mels, frames)
            # NumPy's log, as the reference's np.log(X + eps): torch.log differs in the last bit.
            image = torch.from_numpy(np.log((mel + eps).numpy())).unsqueeze(0)
            out[j, i] = TF.resize(image, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)[0]
    return out[0] if len(splits) == 1 else out


def decode_first_channel(path: str | Path, clip_id: str | None = None) -> tuple[torch.Tensor, int, bool]:
    """(float32 (n,), sample_rate, has_audio): the first channel of the first audio stream at its
    own rate, through 16-bit as the reference's WAV files. No audio: zeros of the clip's length at
    44.1 kHz and ``has_audio=False``. Raises ClipError for an unreadable file."""
    clip_id = clip_id_for(path, clip_id)
    with open_input(path, clip_id) as container:
        stream = find_audio_stream(container)
        chunks, rate, resampler, channels = [], None, None, 1
        if stream is not None:
            try:
                for packet in container.demux(stream):
                    for frame in _decode(packet):
                        if resampler is None:
                            rate, channels = frame.sample_rate, frame.layout.nb_channels
                            resampler = _resampler(frame, clip_id)
                        chunks += [_first_channel(f, channels) for f in resampler.resample(frame)]
            except av.FFmpegError as exc:
                log.debug("%s: audio demuxing stopped early: %s", clip_id, exc)
            if resampler is not None:
                chunks += [_first_channel(f, channels) for f in resampler.resample(None)]
        if chunks and sum(c.size for c in chunks):
            samples = np.concatenate(chunks).astype(np.float32) / np.float32(32768)
            return torch.from_numpy(samples), int(rate), True
        seconds = duration_seconds(container) or FALLBACK_DURATION_S
    log.warning("%s: no audio; using silence", clip_id)
    return torch.zeros(max(N_FFT, int(round(seconds * SILENCE_RATE)))), SILENCE_RATE, False


def _resampler(frame, clip_id: str) -> av.AudioResampler:
    """Interleaved 16-bit at the frame's own rate and layout (a WAV file's samples). Interleaved,
    not planar: PyAV's to_ndarray of a planar frame with 8 channels (7.1) reads past its planes
    and crashes the process; the conversion and its rounding are the same either way."""
    try:
        return av.AudioResampler(format="s16", layout=frame.layout.name, rate=frame.sample_rate)
    except (av.FFmpegError, ValueError) as exc:
        raise ClipError(clip_id, f"cannot convert its {frame.layout.name or 'unnamed'} audio at "
                                 f"{frame.sample_rate} Hz to 16-bit: {av_reason(exc)}") from None


def _first_channel(frame, channels: int) -> np.ndarray:
    """The first channel of an interleaved frame: (1, samples * channels) -> every channels-th."""
    return frame.to_ndarray().reshape(-1, channels)[:, 0]


def _decode(packet) -> list:
    try:
        return packet.decode()
    except (av.InvalidDataError, av.EOFError):
        return []


def load_tsam_spectrogram(path: str | Path, clip_id: str | None = None) -> tuple[torch.Tensor, bool]:
    """(TSAM's audio segment (3, 224, 224), has_audio) of one clip."""
    clip_id = clip_id_for(path, clip_id)
    wave, rate, has_audio = decode_first_channel(path, clip_id)
    try:
        return tsam_spectrogram(wave, rate), has_audio
    except ValueError as exc:   # a rate the fixed 4800-point FFT cannot take, or too few samples
        raise ClipError(clip_id, f"TSAM's audio image: {exc}") from None


# ----------------------------------------------------------------------------- input specs

@register_spec
@dataclass(frozen=True)
class TSAMFrames(InputSpec):
    """TSAM's validation frames (data/tsn.py load_tsam_frames): [0, 1] RGB, 224 x 224."""

    kind: ClassVar[str] = "tsam_frames"
    num_segments: int = 16
    yuv_matrix: str = "bt601"     # as TSMFrames' (data/colour.py)
    LEGACY: ClassVar[dict] = {"yuv_matrix": "stream"}   # caches before it converted the stream's matrix
    views: ClassVar[int] = 1

    def __post_init__(self):
        check_yuv_matrix("TSAMFrames.yuv_matrix", self.yuv_matrix)

    @property
    def output_shape(self) -> tuple:
        return (3, self.num_segments, 224, 224)

    def load(self, path, clip_id: str, threads: int = 0) -> torch.Tensor:
        return load_tsam_frames(path, self.num_segments, clip_id=clip_id, threads=threads,
                                yuv_matrix=self.yuv_matrix)


@register_spec
@dataclass(frozen=True)
class TSAMSpectrogram(InputSpec):
    """TSAM's audio segment (:func:`load_tsam_spectrogram`): a (3, 224, 224) log-mel image, first channel."""

    kind: ClassVar[str] = "tsam_spectrogram"

    @property
    def output_shape(self) -> tuple:
        return (3, *IMAGE_SIZE)

    def load(self, path, clip_id: str, threads: int = 0) -> tuple[torch.Tensor, bool]:
        return load_tsam_spectrogram(path, clip_id)
