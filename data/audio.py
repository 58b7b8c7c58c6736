"""Audio to AST input, exactly AST's AudioSet recipe.

PyAV decodes the first audio stream, its resampler (libswresample) down-mixes to mono with
FFmpeg's default matrix (what ``ffmpeg -ac 1`` does: stereo becomes (L + R) / sqrt(2)) and
resamples to 16 kHz; then: subtract the mean, Kaldi fbank (128 mel bins, 25 ms Hanning window,
10 ms shift, no dither, HTK-compatible, no energy), zero-pad or cut to 1024 frames, and
normalise as ``(x - norm_mean) / (2 * norm_std)`` with AudioSet's statistics.

A clip without an audio stream is not an error: it gets silence of the clip's duration and
``has_audio = False`` (the cache stores the flag next to the embedding of silence).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torchaudio

from ._container import clip_id_for, duration_seconds, find_audio_stream, open_input

log = logging.getLogger(__name__)

# When neither the container nor its streams know how long they are: VGGSound clips are 10 s.
FALLBACK_DURATION_S = 10.0

# Kaldi's fbank needs at least one 25 ms window; shorter input has no frame at all.
_WINDOW_MS = 25.0


@dataclass(frozen=True)
class AudioConfig:
    """AST input: log-mel fbank of ``target_length`` frames x ``num_mel_bins``, AudioSet-normalised."""

    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 1024
    norm_mean: float = -4.2677393
    norm_std: float = 4.5689974

    def __post_init__(self):
        for name in ("sample_rate", "num_mel_bins", "target_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"AudioConfig.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        object.__setattr__(self, "norm_mean", float(self.norm_mean))
        object.__setattr__(self, "norm_std", float(self.norm_std))
        if self.norm_std <= 0:
            raise ValueError(f"AudioConfig.norm_std must be positive, got {self.norm_std!r}")

    def to_dict(self) -> dict:
        """JSON-serialisable; stored with the cache to detect mismatched preprocessing."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AudioConfig":
        return cls(**d)

    @property
    def output_shape(self) -> tuple[int, int]:
        return (self.target_length, self.num_mel_bins)


class AudioAccumulator:
    """Decodes the packets of one audio stream as they are demuxed, to mono float at ``rate``.

    Packets the decoder rejects are skipped (the rest of the stream is kept); format changes
    mid-stream that the resampler cannot follow end the audio there.
    """

    def __init__(self, stream, sample_rate: int):
        self.stream = stream
        self.codec_context = stream.codec_context
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self.sample_rate = sample_rate
        self.chunks: list[np.ndarray] = []
        self.errors = 0
        self.broken = self.codec_context is None
        self.resampled_any = False

    def feed(self, packet: av.Packet | None) -> None:
        if self.broken:
            return
        try:
            frames = self.codec_context.decode(packet)
        except av.EOFError:
            return
        except av.FFmpegError as exc:
            self.errors += 1
            log.debug("audio decoder rejected a packet: %s", exc)
            return
        for frame in frames:
            self._resample(frame)

    def _resample(self, frame) -> None:
        try:
            out = self.resampler.resample(frame)
        except (av.FFmpegError, ValueError) as exc:
            # PyAV's resampler is built for the first frame's format; a stream that changes
            # sample rate or layout midway keeps what came before.
            log.debug("audio resampling stopped: %s", exc)
            self.broken = True
            return
        self.resampled_any = True
        self.chunks.extend(f.to_ndarray().reshape(-1) for f in out)

    def finish(self) -> np.ndarray:
        """All samples, decoder drained and resampler flushed: float32 (n,)."""
        self.feed(None)
        if self.resampled_any and not self.broken:
            try:
                self.chunks.extend(f.to_ndarray().reshape(-1) for f in self.resampler.resample(None))
            except (av.FFmpegError, ValueError) as exc:
                log.debug("audio resampler flush failed: %s", exc)
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self.chunks).astype(np.float32, copy=False)


def silence(container, sample_rate: int) -> torch.Tensor:
    """Zeros as long as the clip (FALLBACK_DURATION_S when nothing says how long): (1, n)."""
    seconds = duration_seconds(container) or FALLBACK_DURATION_S
    return torch.zeros(1, max(1, int(round(seconds * sample_rate))), dtype=torch.float32)


def finish_audio(container, accumulator: AudioAccumulator | None, sample_rate: int,
                 clip_id: str) -> tuple[torch.Tensor, bool]:
    """The decoded waveform (1, n), or silence with ``has_audio=False`` when there is none."""
    if accumulator is not None:
        samples = accumulator.finish()
        if samples.size:
            return torch.from_numpy(samples).unsqueeze(0), True
        log.warning("%s: the audio stream decoded to no samples; using silence", clip_id)
    return silence(container, sample_rate), False


def decode_audio(path: str | Path, sample_rate: int = 16000,
                 clip_id: str | None = None) -> tuple[torch.Tensor, bool]:
    """Decode the first audio stream to mono ``sample_rate`` Hz: (float32 (1, n), has_audio).

    No audio stream (or one with no decodable samples): zeros of the clip's duration and
    ``has_audio=False``. Raises ClipError when the file itself cannot be read.
    """
    clip_id = clip_id_for(path, clip_id)
    with open_input(path, clip_id) as container:
        stream = find_audio_stream(container)
        accumulator = None
        if stream is not None:
            accumulator = AudioAccumulator(stream, sample_rate)
            try:
                for packet in container.demux(stream):
                    if packet.size:
                        accumulator.feed(packet)
            except av.FFmpegError as exc:
                log.debug("%s: audio demuxing stopped early: %s", clip_id, exc)
        return finish_audio(container, accumulator, sample_rate, clip_id)


def fbank_from_waveform(waveform: torch.Tensor | np.ndarray,
                        cfg: AudioConfig = AudioConfig()) -> torch.Tensor:
    """AST's fbank of a mono waveform at ``cfg.sample_rate``: float32 (target_length, num_mel_bins).

    Mean removed, Kaldi fbank, zero-padded (before normalising, as AST does) or cut to
    ``target_length`` frames, then ``(x - norm_mean) / (2 * norm_std)``.
    """
    wave = torch.as_tensor(waveform, dtype=torch.float32)
    if wave.ndim == 1:
        wave = wave.unsqueeze(0)
    if wave.ndim != 2 or wave.shape[0] != 1:
        raise ValueError(f"expected a mono waveform of shape (1, n) or (n,), got {tuple(wave.shape)}"
                         " (down-mix first: decode_audio returns mono)")
    min_samples = int(cfg.sample_rate * _WINDOW_MS / 1000)
    if wave.shape[1] >= min_samples:
        wave = wave - wave.mean()
        fbank = torchaudio.compliance.kaldi.fbank(
            wave, htk_compat=True, sample_frequency=cfg.sample_rate, use_energy=False,
            window_type="hanning", num_mel_bins=cfg.num_mel_bins, dither=0.0, frame_shift=10)
    else:  # not one full window: no frames, all padding
        fbank = torch.zeros(0, cfg.num_mel_bins)
    missing = cfg.target_length - fbank.shape[0]
    if missing > 0:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, missing))
    else:
        fbank = fbank[:cfg.target_length]
    return ((fbank - cfg.norm_mean) / (cfg.norm_std * 2)).contiguous()


def load_fbank(path: str | Path, cfg: AudioConfig = AudioConfig(),
               clip_id: str | None = None) -> tuple[torch.Tensor, bool]:
    """(fbank (target_length, num_mel_bins), has_audio) of one clip. Raises ClipError."""
    waveform, has_audio = decode_audio(path, cfg.sample_rate, clip_id)
    return fbank_from_waveform(waveform, cfg), has_audio
