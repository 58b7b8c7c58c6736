"""Test helpers for data/: a corpus of synthetic clips (awkward and broken ones included) and
independent reference implementations of decoding and preprocessing to compare against.

The references are deliberately naive and share no code with data/: decode every frame with
PyAV, pick indices, resize the whole frame with torch.nn.functional.interpolate, crop, normalise.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from data.synth import write_clip

# ---------------------------------------------------------------------------------------------
# References


def reference_indices(n: int, t: int) -> list[int]:
    """Uniform sampling written out by hand: round(i * (n - 1) / (t - 1)), half to even."""
    if t == 1:
        return [0]
    return [int(round(i * (n - 1) / (t - 1))) for i in range(t)]


def _decode_all(path, keep=None) -> tuple[int, dict[int, np.ndarray]]:
    """Decode every video frame (skipping packets the decoder rejects); keep RGB of ``keep``."""
    kept, count = {}, 0
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams.video
                      if not s.disposition & av.stream.Disposition.attached_pic)
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError:
                break
            try:
                frames = stream.decode(packet)
            except av.FFmpegError:
                continue
            for frame in frames:
                if keep is not None and count in keep:
                    kept[count] = frame.to_ndarray(format="rgb24")
                count += 1
    return count, kept


def reference_sampled_frames(path, num_frames: int = 8) -> tuple[list[int], dict[int, np.ndarray]]:
    """The frame indices TimeSformer's protocol samples and those frames, found by decoding the
    whole clip twice (count, then pick) so that no frame list is held in memory."""
    n, _ = _decode_all(path)
    indices = reference_indices(n, num_frames)
    _, kept = _decode_all(path, set(indices))
    return indices, kept


def reference_preprocess(frames, size=224, mean=(0.45,) * 3, std=(0.225,) * 3, crops=1):
    """Whole-frame resize, crop(s), normalise: float (3, T, S, S) or (3, 3, T, S, S)."""
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous().float() / 255.0
    h, w = x.shape[-2:]
    if w < h:
        nh, nw = int(math.floor(float(h) / w * size)), size
    else:
        nh, nw = size, int(math.floor(float(w) / h * size))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    cy, cx = int(math.ceil((nh - size) / 2)), int(math.ceil((nw - size) / 2))
    if crops == 1:
        offsets = [(cy, cx)]
    elif nh > nw:
        offsets = [(0, cx), (cy, cx), (nh - size, cx)]
    else:
        offsets = [(cy, 0), (cy, cx), (cy, nw - size)]
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    views = [((x[:, :, y:y + size, xx:xx + size] - m) / s).permute(1, 0, 2, 3) for y, xx in offsets]
    return views[0] if crops == 1 else torch.stack(views)


def ast_fbank(waveform: torch.Tensor, target_length=1024, mean=-4.2677393, std=4.5689974):
    """AST's _wav2fbank and normalisation, written out as in its dataloader."""
    waveform = waveform - waveform.mean()
    fbank = torchaudio.compliance.kaldi.fbank(
        waveform, htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_shift=10)
    p = target_length - fbank.shape[0]
    if p > 0:
        fbank = torch.nn.ZeroPad2d((0, 0, 0, p))(fbank)
    elif p < 0:
        fbank = fbank[0:target_length, :]
    return (fbank - mean) / (std * 2)


def reference_clip_tensor(path, num_frames=8, crops=1) -> torch.Tensor:
    """Decode everything, pick, resize/crop/normalise (each distinct frame once: 4K is big)."""
    indices, kept = reference_sampled_frames(path, num_frames)
    distinct = sorted(kept)
    done = reference_preprocess([kept[i] for i in distinct], crops=crops)
    position = [distinct.index(i) for i in indices]
    return done[..., position, :, :]


# ---------------------------------------------------------------------------------------------
# Synthetic corpus


@dataclass
class Case:
    """One synthetic file and what data/ must do with it."""

    name: str
    kwargs: dict | None = None          # write_clip arguments; None: made by ``make``
    error: str | None = None            # regex the ClipError reason matches; None: it loads
    has_audio: bool = True
    frames: int | None = None           # frames the clip holds, where the test cares
    make: str | None = None             # special construction (broken files)
    tags: set = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return self.error is None


_VFR_TIMES = [0, 0.04, 0.2, 0.21, 0.5, 0.9, 0.91, 1.0, 1.3, 1.5, 1.52, 1.9]

CASES = [
    Case("basic.mp4", {}, frames=50, tags={"reference"}),
    Case("odd_size.mp4", {"size": (17, 13)}, tags={"reference"}),
    Case("portrait.mp4", {"size": (36, 80)}, tags={"reference"}),
    Case("tiny.mp4", {"size": (16, 12)}, tags={"reference"}),
    Case("uhd.mp4", {"size": (3840, 2160), "duration": 0.12, "video_options": {"preset": "ultrafast"}},
         frames=3, tags={"reference"}),
    Case("vfr.mp4", {"frame_times": _VFR_TIMES}, frames=len(_VFR_TIMES), tags={"reference"}),
    Case("vfr.mkv", {"frame_times": _VFR_TIMES}, frames=len(_VFR_TIMES), tags={"reference"}),
    Case("ntsc.mp4", {"fps": 30000 / 1001, "duration": 1.0}, tags={"reference"}),
    # Short GOPs make the decoder skip whole groups of frames and restart at keyframes.
    Case("short_gop.mp4", {"duration": 4.0, "video_options": {"g": 6, "keyint_min": 6}},
         frames=100, tags={"reference"}),
    Case("open_gop.mkv", {"duration": 3.0, "video_options": {"g": 12, "x264-params": "open-gop=1"}},
         tags={"reference"}),
    Case("stereo_48k.mkv", {"channels": 2, "sample_rate": 48000}),
    Case("surround_51.mp4", {"channels": 6, "sample_rate": 48000}),
    Case("surround_71.mkv", {"channels": "7.1", "sample_rate": 96000, "size": (32, 24)}),
    Case("rate_8k.mp4", {"sample_rate": 8000}),
    Case("vp9_opus.webm", {"size": (33, 25), "channels": 2, "sample_rate": 48000}, tags={"reference"}),
    Case("mpeg4_bframes.avi", {"video_options": {"bf": 2}}, tags={"reference"}),
    Case("mpeg2.mpg", {}, tags={"reference"}),
    Case("hevc.mkv", {"video_codec": "libx265"}, tags={"reference"}),
    Case("ffv1_pcm.nut", {"size": (31, 17)}, tags={"reference"}),
    Case("mpegts.ts", {}, tags={"reference"}),
    Case("no_audio.mp4", {"audio": False}, has_audio=False),
    Case("short.mp4", {"duration": 0.2}, frames=5, tags={"reference"}),
    Case("one_frame.mp4", {"duration": 0.04}, frames=1, tags={"reference"}),
    Case("half_faststart.mp4", make="truncate_faststart", tags={"reference"}),
    # A raw H.264 stream has no timestamps: the decoder falls back to decoding every frame.
    Case("raw_stream.h264", {"container_format": "h264", "audio": False, "duration": 1.0},
         has_audio=False, tags={"reference"}),
    # Broken ones.
    Case("missing.mp4", make="missing", error="file not found"),
    Case("empty.mp4", make="empty", error="empty file"),
    Case("garbage.mp4", make="garbage", error="cannot open container"),
    Case("truncated.mp4", make="truncate", error="cannot open container"),
    # FFmpeg either refuses it or finds no stream in it, depending on where the noise starts.
    Case("header_only.mp4", make="header_garbage",
         error="no audio or video streams|cannot open container"),
    Case("audio_only.mp4", {"video": False}, error="no video stream"),
    Case("audio_only.m4a", {"video": False}, error="no video stream"),
    Case("a_folder.mp4", make="folder", error="not a regular file"),
]

_BUILT: dict[Path, dict[str, Path]] = {}


def corpus_folder(tmp_path_factory) -> Path:
    """One folder per test session, shared by the test modules that use the corpus."""
    return tmp_path_factory.getbasetemp() / "data_corpus"


def build_corpus(folder: Path) -> dict[str, Path]:
    """Write every case under ``folder`` (once per folder per session): {name: path}."""
    folder = Path(folder)
    if folder in _BUILT:
        return _BUILT[folder]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in CASES:
        path = folder / case.name
        paths[case.name] = path
        if case.kwargs is not None:
            write_clip(path, **case.kwargs)
        else:
            _make_special(case.make, path, folder)
    _BUILT[folder] = paths
    return paths


def _make_special(kind: str, path: Path, folder: Path) -> None:
    rng = np.random.default_rng(0)
    if kind == "missing":
        return
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(rng.integers(0, 256, 30000, dtype=np.uint8).tobytes())
    elif kind == "truncate":  # moov atom at the end (FFmpeg's default): nothing is readable
        whole = write_clip(folder / "_whole.mp4", duration=1.0).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "truncate_faststart":  # moov first: the first half of the frames survive
        whole = write_clip(folder / "_whole_fs.mp4", duration=2.0,
                           container_options={"movflags": "faststart"}).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "header_garbage":  # a valid 'ftyp' box, then noise
        whole = write_clip(folder / "_whole_hdr.mp4", duration=0.5).read_bytes()
        path.write_bytes(whole[:32] + rng.integers(0, 256, 30000, dtype=np.uint8).tobytes())
    elif kind == "folder":
        path.mkdir(exist_ok=True)
    else:
        raise ValueError(kind)


def case(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def link(src: Path, dst: Path) -> None:
    """Symlink a real clip into a test folder (real clips are never copied)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)
