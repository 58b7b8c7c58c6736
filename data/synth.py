"""Write small synthetic clips with PyAV: for tests, and for the demo's generated dataset.

    write_clip("a.mp4")                                     # 2 s, 25 fps, 64x48, 44.1 kHz mono
    write_clip("b.webm", size=(17, 13), sample_rate=48000, channels=2)
    write_clip("c.mkv", frame_times=[0, .04, .2, .21, .5])  # variable frame rate
    write_clip("d.mp4", video=False)                        # audio only
    write_clip("e.mp4", frame_fn=lambda i: frames[i], audio_fn=lambda t: np.sin(880 * t))
    write_clip("f.mp4", colorspace="bt709")                 # YUV coded and tagged as BT.709

The container comes from the suffix (or ``container_format``), the codecs from the container
(or ``video_codec`` / ``audio_codec``).
"""
from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np

# suffix -> (container format, video codec, audio codec)
CONTAINER_DEFAULTS = {
    ".mp4": ("mp4", "libx264", "aac"),
    ".m4v": ("mp4", "libx264", "aac"),
    ".m4a": ("mp4", None, "aac"),
    ".mov": ("mov", "libx264", "aac"),
    ".mkv": ("matroska", "libx264", "aac"),
    ".webm": ("webm", "libvpx-vp9", "libopus"),
    ".avi": ("avi", "mpeg4", "libmp3lame"),
    ".mpg": ("mpeg", "mpeg2video", "mp2"),
    ".ts": ("mpegts", "libx264", "aac"),
    ".flv": ("flv", "flv", "libmp3lame"),
    ".nut": ("nut", "ffv1", "pcm_s16le"),
    ".wav": ("wav", None, "pcm_s16le"),
    ".mp3": ("mp3", None, "libmp3lame"),
}
CHANNEL_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
# Sample rates libopus accepts (webm's default audio codec).
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# colorspace= -> (the stream's tag, FFmpeg's AVColorSpace; swscale's matrix for RGB -> YUV).
COLORSPACES = {"bt709": (1, "ITU709"), "bt601": (6, "ITU601")}
# Encoder options that keep tests fast and quiet; B-frames stay on (x264 veryfast has them),
# so decoding exercises frame reordering like real clips do.
DEFAULT_VIDEO_OPTIONS = {
    "libx264": {"preset": "veryfast"},
    "libx265": {"preset": "veryfast", "x265-params": "log-level=error"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"},
    "libvpx": {"deadline": "realtime", "cpu-used": "8"},
}


def moving_pattern(index: int, width: int, height: int) -> np.ndarray:
    """A frame that differs visibly from its neighbours: gradients plus a square that moves.

    uint8 (height, width, 3); frame ``index`` of a clip.
    """
    y, x = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    frame[..., 1] = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    frame[..., 2] = (index * 23) % 256
    side = max(1, min(width, height) // 4)
    x0 = (index * max(1, width // 16)) % max(1, width - side + 1)
    y0 = (index * max(1, height // 12)) % max(1, height - side + 1)
    frame[y0:y0 + side, x0:x0 + side] = (255, 255, 255) if index % 2 else (0, 0, 0)
    return frame


def chord(t: np.ndarray, channels: int = 1) -> np.ndarray:
    """A quiet tone per channel (440 Hz times the channel number): float32 (channels, n)."""
    return np.stack([0.3 * np.sin(2 * np.pi * 440.0 * (c + 1) * t) for c in range(channels)]
                    ).astype(np.float32)


def write_clip(path: str | Path, *, duration: float = 2.0, fps: float = 25,
               size: tuple[int, int] = (64, 48), sample_rate: int = 44100,
               channels: int | str = 1, video: bool = True, audio: bool = True,
               container_format: str | None = None, video_codec: str | None = None,
               audio_codec: str | None = None, pix_fmt: str | None = None,
               video_options: dict | None = None, container_options: dict | None = None,
               frame_times: Sequence[float] | None = None, colorspace: str | None = None,
               frame_fn: Callable[[int], np.ndarray] | None = None,
               audio_fn: Callable[[np.ndarray], np.ndarray] | None = None,
               audio_duration: float | None = None) -> Path:
    """Write a test clip; returns its path.

    ``size`` is (width, height). ``channels``: a count (1, 2, 6) or an FFmpeg layout name.
    ``frame_times``: explicit presentation times in seconds (variable frame rate); otherwise
    ``round(duration * fps)`` frames at ``fps``. ``frame_fn(i)`` gives frame i as uint8
    (height, width, 3) (default :func:`moving_pattern`); ``audio_fn(t)`` maps sample times in
    seconds to samples, (n,) for every channel or (channels, n) (default :func:`chord`).
    ``video_options`` go to the video encoder, ``container_options`` to the muxer (e.g.
    ``{"movflags": "faststart"}``). ``colorspace`` ("bt709", "bt601"): the frames are converted
    to YUV with that matrix (limited range) and the stream is tagged with it (matrix, primaries,
    transfer, range); None: swscale's default BT.601, untagged. ``audio_duration``: seconds of
    sound when it is not the video's ``duration`` (20 ms of audio beside a second of video).
    """
    path = Path(path)
    if not (video or audio):
        raise ValueError("a clip needs video or audio (or both)")
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"size must be (width, height) >= 1, got {size!r}")
    fmt, default_vcodec, default_acodec = CONTAINER_DEFAULTS.get(path.suffix.lower(), (None, "libx264", "aac"))
    container_format = container_format or fmt
    video_codec = video_codec or default_vcodec or "libx264"
    audio_codec = audio_codec or default_acodec or "aac"
    layout = CHANNEL_LAYOUTS.get(channels, channels) if isinstance(channels, int) else channels
    if isinstance(layout, int):
        raise ValueError(f"channels={channels}: use 1, 2, 6 or an FFmpeg layout name")
    if audio and audio_codec == "libopus" and sample_rate not in OPUS_RATES:
        raise ValueError(f"libopus (webm's audio codec) cannot encode {sample_rate} Hz; use one of "
                         f"{OPUS_RATES} or pass audio_codec=")
    times = _frame_times(duration, fps, frame_times)
    if colorspace is not None and colorspace not in COLORSPACES:
        raise ValueError(f"colorspace must be one of {', '.join(COLORSPACES)} or None, got {colorspace!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container_format, options=container_options or {}) as out:
        vstream = astream = None
        if video:
            vstream = _add_video_stream(out, video_codec, width, height, fps, pix_fmt,
                                        video_options, variable=frame_times is not None)
            if colorspace is not None:
                context = vstream.codec_context
                context.colorspace = context.color_primaries = context.color_trc = COLORSPACES[colorspace][0]
                context.color_range = 1   # AVCOL_RANGE_MPEG: limited
        if audio:
            astream = out.add_stream(audio_codec, rate=sample_rate, layout=layout)
        if vstream is not None:
            frame_fn = frame_fn or functools.partial(moving_pattern, width=width, height=height)
            _write_video(out, vstream, frame_fn, times, width, height,
                         None if colorspace is None else COLORSPACES[colorspace][1])
        if astream is not None:
            seconds = duration if audio_duration is None else audio_duration
            n = max(1, int(round(seconds * sample_rate)))
            _write_audio(out, astream, audio_fn, n, sample_rate, layout)
    return path


def _frame_times(duration: float, fps: float, frame_times: Sequence[float] | None) -> list[float]:
    if frame_times is not None:
        times = [float(t) for t in frame_times]
        if not times or any(b <= a for a, b in zip(times, times[1:])) or times[0] < 0:
            raise ValueError("frame_times must be non-empty, non-negative and increasing")
        return times
    if fps <= 0 or duration <= 0:
        raise ValueError(f"fps and duration must be positive, got fps={fps}, duration={duration}")
    return [i / fps for i in range(max(1, int(round(duration * fps))))]


def _add_video_stream(out, codec: str, width: int, height: int, fps: float,
                      pix_fmt: str | None, options: dict | None, variable: bool):
    rate = Fraction(fps).limit_denominator(1001)
    stream = out.add_stream(codec, rate=rate)
    stream.width, stream.height = width, height
    # x264 needs even sizes in 4:2:0; full-chroma 4:4:4 takes any size.
    odd = width % 2 or height % 2
    stream.pix_fmt = pix_fmt or ("yuv444p" if odd and codec in ("libx264", "libx265") else "yuv420p")
    # Milliseconds carry arbitrary frame times; otherwise one tick per frame.
    stream.codec_context.time_base = Fraction(1, 1000) if variable else 1 / rate
    merged = dict(DEFAULT_VIDEO_OPTIONS.get(codec, {}))
    merged.update(options or {})
    if merged:
        stream.options = {k: str(v) for k, v in merged.items()}
    return stream


def _write_video(out, stream, frame_fn, times: list[float], width: int, height: int,
                 matrix: str | None = None) -> None:
    time_base = stream.codec_context.time_base
    for i, t in enumerate(times):
        pixels = np.asarray(frame_fn(i))
        if pixels.dtype != np.uint8 or pixels.shape != (height, width, 3):
            raise ValueError(f"frame_fn({i}) must return uint8 ({height}, {width}, 3), "
                             f"got {pixels.dtype} {pixels.shape}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        if matrix is not None:   # the encoder would convert with BT.601 whatever the tag
            frame = frame.reformat(format=stream.pix_fmt, dst_colorspace=matrix, dst_color_range="MPEG")
        frame.pts = int(round(t / time_base))
        frame.time_base = time_base
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def _write_audio(out, stream, audio_fn, n: int, sample_rate: int, layout: str) -> None:
    channels = av.AudioLayout(layout).nb_channels
    t = np.arange(n, dtype=np.float64) / sample_rate
    samples = chord(t, channels) if audio_fn is None else np.asarray(audio_fn(t), dtype=np.float32)
    if samples.ndim == 1:
        samples = np.broadcast_to(samples, (channels, n))
    if samples.shape != (channels, n):
        raise ValueError(f"audio_fn must return ({n},) or ({channels}, {n}) samples, got {samples.shape}")
    samples = np.ascontiguousarray(np.clip(samples, -1, 1), dtype=np.float32)
    chunk = 4096
    for start in range(0, n, chunk):
        # Interleaved ("flt") rather than planar: PyAV cannot fill 8 or more planes.
        block = np.ascontiguousarray(samples[:, start:start + chunk].T).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(block, format="flt", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
