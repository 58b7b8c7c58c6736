"""Audio to AST / CAV-MAE input: their wav files, then AST's fbank recipe.

The reference projects do not decode video files: they read 16 kHz 16-bit wav files that FFmpeg
wrote, with ``torchaudio.load`` (AST src/dataloader.py and CAV-MAE src/dataloader.py,
``AudiosetDataset._wav2fbank``). This module produces the same samples without the file:

1. PyAV decodes the first audio stream; its resampler (libswresample, FFmpeg's default options:
   no dither) converts to **signed 16-bit** at 16 kHz, as ``ffmpeg -i clip -vn -ar 16000 [-ac 1]
   out.wav`` does. The down-mix (``AudioConfig.downmix``):

   * ``"ffmpeg"`` (default, AST): mono by FFmpeg's default matrix, what ``-ac 1`` does. For 16-bit
     output libswresample normalises the matrix so no output can clip: stereo becomes
     ``(L + R) / 2``. (Float output keeps the unnormalised ``(L + R) / sqrt(2)``: that is why
     the resampler must produce s16, not flt, to match a wav file.) AST published no extraction
     script for AudioSet; this is the recipe its README describes (16 kHz audio) done by FFmpeg.
   * ``"first"`` (CAV-MAE): every channel resampled to 16-bit, then the first one kept: CAV-MAE's
     src/preprocess/extract_audio.py runs ``ffmpeg -i clip -vn -ar 16000 tmp.wav`` (channels
     kept) then ``sox tmp.wav out.wav remix 1`` (channel 1 only, a sample-exact copy).

2. ``int16 / 32768`` as float32: what ``torchaudio.load`` returns for a 16-bit wav (normalize).
3. ``_wav2fbank``: subtract the waveform's mean, ``torchaudio.compliance.kaldi.fbank(htk_compat=
   True, sample_frequency=16000, use_energy=False, window_type="hanning", num_mel_bins=128,
   dither=0.0, frame_shift=10)``, zero-pad (``ZeroPad2d``) or cut to ``target_length`` frames.
4. ``__getitem__``: ``(fbank - norm_mean) / (norm_std * norm_std_scale)``: AST divides by
   ``norm_std * 2``, CAV-MAE by ``norm_std`` (norm_std_scale 2 and 1).

A clip without an audio stream is not an error: it gets silence of the clip's duration and
``has_audio = False`` (the cache stores the flag next to the embedding of silence).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
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

DOWNMIX_MODES = ("ffmpeg", "first")

# 16-bit PCM full scale, the divisor torchaudio.load applies to a 16-bit wav.
_S16_SCALE = 32768.0


@dataclass(frozen=True)
class AudioConfig:
    """Log-mel fbank of ``target_length`` frames x ``num_mel_bins``, normalised as
    ``(x - norm_mean) / (norm_std * norm_std_scale)``. Defaults: AST's AudioSet values."""

    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 1024
    norm_mean: float = -4.2677393
    norm_std: float = 4.5689974
    norm_std_scale: float = 2.0     # AST: 2 (src/dataloader.py); CAV-MAE: 1
    downmix: str = "ffmpeg"         # "ffmpeg" (-ac 1 to s16: (L+R)/2) or "first" (sox remix 1)

    def __post_init__(self):
        for name in ("sample_rate", "num_mel_bins", "target_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"AudioConfig.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("norm_mean", "norm_std", "norm_std_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                    or not np.isfinite(value):
                raise ValueError(f"AudioConfig.{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("norm_std", "norm_std_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"AudioConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.downmix not in DOWNMIX_MODES:
            raise ValueError(f"AudioConfig.downmix must be one of {', '.join(DOWNMIX_MODES)}, "
                             f"got {self.downmix!r}")

    def to_dict(self) -> dict:
        """JSON-serialisable; stored with the cache to detect mismatched preprocessing."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AudioConfig":
        """Inverse of ``to_dict``. A dict without ``norm_std_scale`` or ``downmix`` (written
        before they existed) gets the defaults: AST's ``2 * std`` as before, and the 16-bit
        FFmpeg down-mix, which replaced the float one on purpose (the float one was no
        reference's recipe)."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"AudioConfig has no field {', '.join(unknown)}")
        return cls(**d)

    @property
    def output_shape(self) -> tuple[int, int]:
        return (self.target_length, self.num_mel_bins)

    def features(self, waveform) -> torch.Tensor:
        """What an audio spec gives the model from the decoded mono waveform: here the fbank.
        (Other audio specs, e.g. TSAM's spectrogram image, implement the same method.)"""
        return fbank_from_waveform(waveform, self)


class AudioAccumulator:
    """Decodes the packets of one audio stream as they are demuxed, to 16-bit mono at ``rate``.

    Packets the decoder rejects are skipped (the rest of the stream is kept); format changes
    mid-stream that the resampler cannot follow end the audio there.
    """

    def __init__(self, stream, sample_rate: int, downmix: str = "ffmpeg"):
        if downmix not in DOWNMIX_MODES:
            raise ValueError(f"downmix must be one of {', '.join(DOWNMIX_MODES)}, got {downmix!r}")
        self.stream = stream
        self.codec_context = stream.codec_context
        # s16 as the wav files are: the mono matrix FFmpeg uses depends on it (see the module
        # docstring). "first": layout None keeps the input's channels, channel 0 is kept below.
        self.resampler = av.AudioResampler(format="s16", layout="mono" if downmix == "ffmpeg" else None,
                                           rate=sample_rate)
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

    def _keep(self, frames) -> None:
        for f in frames:
            # Packed s16: (1, samples * channels), interleaved; channel 0 is every n-th sample.
            channels = len(f.layout.channels)
            self.chunks.append(f.to_ndarray().reshape(-1, channels)[:, 0])

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
        self._keep(out)

    def finish(self) -> np.ndarray:
        """All samples, decoder drained and resampler flushed, as ``torchaudio.load`` reads a
        16-bit wav: float32 ``int16 / 32768``, shape (n,)."""
        self.feed(None)
        if self.resampled_any and not self.broken:
            try:
                self._keep(self.resampler.resample(None))
            except (av.FFmpegError, ValueError) as exc:
                log.debug("audio resampler flush failed: %s", exc)
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self.chunks).astype(np.float32) / np.float32(_S16_SCALE)


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


def decode_audio(path: str | Path, sample_rate: int = 16000, clip_id: str | None = None,
                 downmix: str = "ffmpeg") -> tuple[torch.Tensor, bool]:
    """The clip's first audio stream as its 16 kHz 16-bit wav would load: (float32 (1, n), has_audio).

    Samples are multiples of 1/32768 (see the module docstring for ``downmix``). No audio stream
    (or one with no decodable samples): zeros of the clip's duration and ``has_audio=False``.
    Raises ClipError when the file itself cannot be read.
    """
    clip_id = clip_id_for(path, clip_id)
    with open_input(path, clip_id) as container:
        stream = find_audio_stream(container)
        accumulator = None
        if stream is not None:
            accumulator = AudioAccumulator(stream, sample_rate, downmix)
            try:
                for packet in container.demux(stream):
                    if packet.size:
                        accumulator.feed(packet)
            except av.FFmpegError as exc:
                log.debug("%s: audio demuxing stopped early: %s", clip_id, exc)
        return finish_audio(container, accumulator, sample_rate, clip_id)


def fbank_from_waveform(waveform: torch.Tensor | np.ndarray,
                        cfg: AudioConfig = AudioConfig()) -> torch.Tensor:
    """``_wav2fbank`` and the normalisation of AST's src/dataloader.py on a mono waveform at
    ``cfg.sample_rate``: float32 (target_length, num_mel_bins).

    Mean removed, Kaldi fbank, zero-padded (before normalising, as the reference does) or cut
    to ``target_length`` frames, then ``(x - norm_mean) / (norm_std * norm_std_scale)``.
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
    return ((fbank - cfg.norm_mean) / (cfg.norm_std * cfg.norm_std_scale)).contiguous()


def load_fbank(path: str | Path, cfg: AudioConfig = AudioConfig(),
               clip_id: str | None = None) -> tuple[torch.Tensor, bool]:
    """(fbank (target_length, num_mel_bins), has_audio) of one clip. Raises ClipError."""
    waveform, has_audio = decode_audio(path, cfg.sample_rate, clip_id, cfg.downmix)
    return fbank_from_waveform(waveform, cfg), has_audio
