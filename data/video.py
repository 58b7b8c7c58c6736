"""Video clips to TimeSformer input: PyAV decoding of only the sampled frames, then resize/crop/normalise.

Test-time protocol (TimeSformer / SlowFast, one temporal view):

* Temporal sampling: ``num_frames`` indices ``rint(linspace(0, n - 1, num_frames))`` over the
  ``n`` frames the clip presents (rounded half to even, as ``numpy.rint``); a clip with fewer
  than ``num_frames`` frames repeats frames. ``n`` is counted from the container's packets, not
  taken from metadata, which is wrong for variable-frame-rate clips and for mp4s cut with an
  edit list (their pre-roll frames are decoded but never shown, so they are not counted).
* Spatial: uint8 RGB -> float / 255 -> short side resized to ``img_size`` (bilinear,
  ``align_corners=False``, long side ``floor(long / short * img_size)``) -> crop(s) of
  ``img_size`` -> ``(x - mean) / std``. Only the crop's pixels are computed, each from its four
  bilinear neighbours with PyTorch's weights: this equals ``interpolate`` on the whole frame
  followed by the crop to ~1e-6, at a fraction of the cost.
* Views: one centre crop -> (3, T, S, S); ``spatial_crops=3`` (left/centre/right, or
  top/centre/bottom for portrait) -> (3 views, 3, T, S, S), kept apart for the extractor,
  which embeds each view and averages the three embeddings.

Speed (this is the CPU hot path of extraction): one demux pass records every video packet
(held in memory up to a budget) and the decoder is then fed only what the sampled frames need:
for each one, from the last keyframe that precedes it in both decode and display order up to
its own packet. Packets in between that nothing needs are skipped (the in-memory equivalent of
seeking to a keyframe), and for codecs that honour it, non-reference frames that are not sampled
are dropped by the decoder (``skip_frame=NONREF``), which cannot change any other frame. Only
the sampled frames are converted to RGB. If that plan misses a frame (timestamps absent or
duplicated, undecodable frames), the clip is decoded in full and the sampled frames are picked
from what actually decodes, so the result always equals "decode every frame, pick the indices".

Frames are taken as FFmpeg decodes them, like TimeSformer's PyAV loader: rotation metadata
(phone videos) and non-square pixel aspect ratios are not applied.
"""
from __future__ import annotations

import bisect
import functools
import itertools
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import av
import numpy as np
import torch

from ._container import av_reason, clip_id_for, find_video_stream, open_input
from .errors import ClipError

log = logging.getLogger(__name__)

# Decoders known to honour skip_frame=NONREF per packet (it is copied into frame threads at
# submit time), so toggling it between packets is exact. Others are simply decoded in full.
_NONREF_SKIP_CODECS = frozenset({"h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4"})

# Video packets held in memory after the demux pass, so decoding needs no second read. A clip
# of ten seconds is a few MB; past this budget (hours of video) the file is demuxed again.
PACKET_BUDGET_BYTES = 256 * 2**20


@dataclass(frozen=True)
class VideoConfig:
    """TimeSformer input: ``num_frames`` frames of ``img_size`` squared, normalised per channel.

    ``spatial_crops`` is 1 (centre crop) or 3 (left/centre/right for landscape, top/centre/bottom
    for portrait: TimeSformer's 3-view test protocol).
    """

    num_frames: int = 8
    img_size: int = 224
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    spatial_crops: int = 1

    def __post_init__(self):
        for name in ("num_frames", "img_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"VideoConfig.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"VideoConfig.{name} needs one value per RGB channel, got {value!r}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"VideoConfig.std must be positive, got {self.std!r}")
        if self.spatial_crops not in (1, 3):
            raise ValueError(f"VideoConfig.spatial_crops must be 1 or 3, got {self.spatial_crops!r}")

    def to_dict(self) -> dict:
        """JSON-serialisable; stored with the cache to detect mismatched preprocessing."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VideoConfig":
        return cls(**d)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one clip's tensor: (3, T, S, S), or (3 views, 3, T, S, S)."""
        one = (3, self.num_frames, self.img_size, self.img_size)
        return one if self.spatial_crops == 1 else (3,) + one


# --------------------------------------------------------------------------------------------
# Temporal sampling


def sample_indices(num_available: int, num_frames: int) -> list[int]:
    """Indices of ``num_frames`` frames spread uniformly over ``num_available`` (first and last
    included): ``rint(linspace(0, num_available - 1, num_frames))``; repeats when too few."""
    if num_available < 1:
        raise ValueError(f"need at least one frame to sample from, got {num_available}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    return np.rint(np.linspace(0, num_available - 1, num_frames)).astype(np.int64).tolist()


# --------------------------------------------------------------------------------------------
# Spatial preprocessing


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after scaling the short side to ``size``, long side floored (SlowFast)."""
    if width < height:
        return int(math.floor(float(height) / width * size)), size
    return size, int(math.floor(float(width) / height * size))


def crop_offsets(height: int, width: int, size: int, spatial_crops: int) -> list[tuple[int, int]]:
    """(y, x) of each crop in the resized frame: centre only, or SlowFast's spatial_idx 0, 1, 2."""
    centre = (int(math.ceil((height - size) / 2)), int(math.ceil((width - size) / 2)))
    if spatial_crops == 1:
        return [centre]
    if height > width:  # portrait: top, centre, bottom
        return [(0, centre[1]), centre, (height - size, centre[1])]
    return [(centre[0], 0), centre, (centre[0], width - size)]


def _bilinear_taps(in_size: int, out_size: int, start: int, count: int):
    """Source indices and weights of ``interpolate(mode="bilinear", align_corners=False)`` for
    output positions ``start .. start + count - 1``, computed the way PyTorch's CPU kernel does:
    float32 scale ``in / out``, source position ``scale * (dst + 0.5) - 0.5`` rounded to float32
    once (the kernel is compiled with fused multiply-add; rounding twice moves the weights by
    up to 1e-4 of a pixel, visible at 1e-5 after normalisation)."""
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    dst = np.arange(start, start + count, dtype=np.float64)
    src = (scale * (dst + 0.5) - 0.5).astype(np.float32)  # exact in float64, then one rounding
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i1, w1


@functools.lru_cache(maxsize=4)  # 2.4 MB per crop at 224; a clip reuses one entry
def _crop_plan(height: int, width: int, size: int, spatial_crops: int,
               mean: tuple[float, ...], std: tuple[float, ...]) -> list[tuple]:
    """Per crop of a (height, width) frame: source rows and columns of the four bilinear
    neighbours and the weight of each, with /255 and /std folded in, plus mean/std to subtract.
    The frames of a clip share their size, so this is computed once per clip."""
    new_h, new_w = resized_size(height, width, size)
    scale = (np.float32(1.0) / (np.float32(255.0) * np.asarray(std, dtype=np.float32)))
    offset = np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)
    plan = []
    for y, x in crop_offsets(new_h, new_w, size, spatial_crops):
        y0, y1, wy = _bilinear_taps(height, new_h, y, size)
        x0, x1, wx = _bilinear_taps(width, new_w, x, size)
        wy, wx = wy[:, None, None], wx[None, :, None]
        weights = [np.ascontiguousarray(np.broadcast_to(w * scale, (size, size, 3)), dtype=np.float32)
                   for w in ((1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx)]
        for array in (y0, y1, x0, x1, *weights):
            array.setflags(write=False)  # shared through the cache
        plan.append((y0, y1, x0, x1, weights, offset))
    return plan


def _frame_views(rgb: np.ndarray, cfg: VideoConfig) -> np.ndarray:
    """One uint8 (H, W, 3) frame -> float32 (views, S, S, 3), resized, cropped and normalised.

    Only the source pixels the crops read are gathered: resizing a whole 720p frame to then keep
    a 224 square wastes most of the work, and the result equals resize-then-crop (within float
    rounding, ~1e-6) because bilinear interpolation is separable and local. NumPy on whole
    contiguous planes, not torch: these small element-wise steps gain nothing from torch's
    thread pool, whose hand-offs cost milliseconds per operation on a busy machine.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB frame, got {rgb.dtype} {rgb.shape}")
    size = cfg.img_size
    plan = _crop_plan(rgb.shape[0], rgb.shape[1], size, cfg.spatial_crops, cfg.mean, cfg.std)
    views = np.empty((len(plan), size, size, 3), dtype=np.float32)
    scratch = np.empty((size, size, 3), dtype=np.float32)
    for out, (y0, y1, x0, x1, (w00, w01, w10, w11), offset) in zip(views, plan):
        upper, lower = rgb.take(y0, axis=0), rgb.take(y1, axis=0)
        np.multiply(upper.take(x0, axis=1), w00, out=out)
        out += np.multiply(upper.take(x1, axis=1), w01, out=scratch)
        out += np.multiply(lower.take(x0, axis=1), w10, out=scratch)
        out += np.multiply(lower.take(x1, axis=1), w11, out=scratch)
        out -= offset
    return views


def assemble_views(per_frame: Sequence[np.ndarray], cfg: VideoConfig) -> torch.Tensor:
    """T arrays (views, S, S, 3) -> float32 tensor (3, T, S, S), or (views, 3, T, S, S)."""
    stacked = np.stack(per_frame, axis=1)  # (V, T, S, S, 3)
    out = torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 4, 1, 2, 3)))  # (V, 3, T, S, S)
    return out[0] if cfg.spatial_crops == 1 else out


def preprocess_frames(frames: Sequence[np.ndarray], cfg: VideoConfig = VideoConfig()) -> torch.Tensor:
    """Already-sampled uint8 RGB frames (each (H, W, 3); sizes may differ) -> model input.

    Returns float32 (3, T, S, S), or (3 views, 3, T, S, S) when ``cfg.spatial_crops == 3``.
    """
    if len(frames) == 0:
        raise ValueError("no frames to preprocess")
    return assemble_views([_frame_views(np.asarray(f), cfg) for f in frames], cfg)


# --------------------------------------------------------------------------------------------
# Decoding


class PacketIndex:
    """What one demux pass learned about the video stream, in decode order."""

    def __init__(self, budget: int | None = None):
        self.pts: list[int | None] = []
        self.key: list[bool] = []
        self.shown: list[bool] = []
        self.packets: list[av.Packet] | None = []
        self.nbytes = 0
        self.budget = PACKET_BUDGET_BYTES if budget is None else budget
        self.truncated_by: str | None = None  # why demuxing stopped before the end, if it did

    def add(self, packet: av.Packet) -> None:
        self.pts.append(packet.pts)
        self.key.append(bool(packet.is_keyframe))
        # Packets flagged discard (mp4 edit-list pre-roll) are decoded for reference only.
        self.shown.append(not packet.is_discard)
        if self.packets is not None:
            self.nbytes += packet.size
            if self.nbytes > self.budget:
                log.debug("video packets exceed %d bytes: decoding will demux again", self.budget)
                self.packets = None
            else:
                self.packets.append(packet)

    @property
    def num_shown(self) -> int:
        return sum(self.shown)

    def frame_pts(self) -> list[int] | None:
        """Presentation timestamps of the shown frames in display order, or None when they
        cannot identify frames (missing or duplicated timestamps)."""
        if any(p is None for p in self.pts) or len(set(self.pts)) != len(self.pts):
            return None
        return sorted(p for p, shown in zip(self.pts, self.shown) if shown)


def demux_video(container, stream, index: PacketIndex, on_other: Callable | None = None,
                other_streams: Iterable = ()) -> PacketIndex:
    """Read every packet of ``stream`` (and ``other_streams``, handed to ``on_other``) once.

    A file that stops early (truncated, corrupt tail) keeps what was read: the decoder then
    works with the frames it got.
    """
    try:
        for packet in container.demux(stream, *other_streams):
            if packet.size == 0:  # end-of-stream markers
                continue
            if packet.stream_index == stream.index:
                index.add(packet)
            elif on_other is not None:
                on_other(packet)
    except av.FFmpegError as exc:
        index.truncated_by = str(exc)
        log.debug("demuxing stopped early: %s", exc)
    return index


def _decode(codec_context, packet: av.Packet | None) -> list:
    """Frames out of one packet (None drains); a packet the decoder rejects gives none."""
    try:
        return codec_context.decode(packet)
    except av.EOFError:
        return []
    except av.FFmpegError as exc:
        log.debug("decoder rejected a packet: %s", exc)
        return []


class _PacketSource:
    """Video packets in decode order, re-iterable: from memory, or by demuxing the file again."""

    def __init__(self, path: Path, stream, index: PacketIndex):
        self.path, self.stream, self.index = path, stream, index

    def __iter__(self) -> Iterator[av.Packet]:
        if self.index.packets is not None:
            yield from self.index.packets
            return
        with av.open(str(self.path), metadata_errors="ignore") as container:
            stream = container.streams[self.stream.index]
            count = len(self.index.pts)
            try:
                for packet in container.demux(stream):
                    if packet.size == 0:
                        continue
                    if count == 0:
                        break
                    count -= 1
                    yield packet
            except av.FFmpegError as exc:
                log.debug("second demux pass stopped early: %s", exc)


def _configure(codec_context, threads: int) -> None:
    codec_context.thread_type = "AUTO"
    codec_context.thread_count = max(0, int(threads))  # 0: FFmpeg picks one per core


def _decode_plan(index: PacketIndex, wanted: set[int]) -> list[bool]:
    """Which packets (decode order) the wanted frames need: for each, everything from the last
    keyframe that precedes it in both decode and display order (an open-GOP keyframe can come
    before frames it does not serve) up to its own packet."""
    position = {pts: i for i, pts in enumerate(index.pts)}
    keys = [i for i, is_key in enumerate(index.key) if is_key]
    need = [False] * len(index.pts)
    for pts in wanted:
        end = position[pts]
        k = bisect.bisect_right(keys, end) - 1
        while k >= 0 and index.pts[keys[k]] > pts:
            k -= 1
        start = keys[k] if k >= 0 else 0
        need[start:end + 1] = [True] * (end + 1 - start)
    return need


def _decode_sampled_fast(codec_context, packets: Iterable[av.Packet], index: PacketIndex,
                         wanted: set[int], convert: Callable) -> dict[int, np.ndarray]:
    """Decode only the packets the plan needs; returns {pts: converted frame} for wanted pts."""
    need = _decode_plan(index, wanted)
    skip_nonref = codec_context.name in _NONREF_SKIP_CODECS
    got: dict[int, np.ndarray] = {}

    def take(frames):
        for frame in frames:
            if frame.pts in wanted and frame.pts not in got:
                got[frame.pts] = convert(frame)

    last_fed = None
    for i, packet in enumerate(packets):
        if i >= len(need):
            break
        if not need[i]:
            continue
        if last_fed is not None and i != last_fed + 1:
            # Jumping to a keyframe: collect what the decoder still holds, then start clean.
            codec_context.skip_frame = "DEFAULT"
            take(_decode(codec_context, None))
            codec_context.flush_buffers()
        if skip_nonref:
            codec_context.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
        take(_decode(codec_context, packet))
        last_fed = i
    codec_context.skip_frame = "DEFAULT"
    take(_decode(codec_context, None))
    codec_context.flush_buffers()
    return got


def _decode_sampled_full(codec_context, packets: Iterable[av.Packet], num_estimate: int,
                         num_frames: int, convert: Callable, clip_id: str) -> list[np.ndarray]:
    """Decode every packet and pick the sampled frames by their position in display order.

    ``num_estimate`` (packets shown) is tried first; if a different number of frames decodes,
    a second pass picks the indices over the frames that actually exist.
    """
    total = num_estimate
    for _ in range(2):
        positions = sample_indices(total, num_frames) if total > 0 else []
        wanted = set(positions)
        got: dict[int, np.ndarray] = {}
        count = 0
        for packet in itertools.chain(packets, [None]):
            for frame in _decode(codec_context, packet):
                if count in wanted:
                    got[count] = convert(frame)
                count += 1
        codec_context.flush_buffers()
        if count == 0:
            raise ClipError(clip_id, "no decodable video frames")
        if count == total:
            return [got[p] for p in positions]
        log.debug("%s: %d frames decoded where %d packets were shown", clip_id, count, total)
        total = count
    raise ClipError(clip_id, "video decoding gave a different frame count on each pass")


def decode_sampled_frames(path: Path, stream, index: PacketIndex, cfg: VideoConfig,
                          clip_id: str, threads: int = 0,
                          convert: Callable | None = None) -> list:
    """The sampled frames of a demuxed video stream, each passed through ``convert``.

    ``convert`` maps an ``av.VideoFrame`` to what is kept (default: the preprocessed views).
    """
    if convert is None:
        def convert(frame):
            try:
                rgb = frame.to_ndarray(format="rgb24")
            except (av.FFmpegError, ValueError) as exc:
                raise ClipError(clip_id, f"cannot convert video frames to RGB: {av_reason(exc)}") from None
            return _frame_views(rgb, cfg)
    if not index.pts:
        raise ClipError(clip_id, "no decodable video frames (the video stream has no packets)")
    codec_context = stream.codec_context
    if codec_context is None:
        raise ClipError(clip_id, "no decoder for this video codec")
    _configure(codec_context, threads)
    if index.truncated_by:
        log.warning("%s: the file ends early (%s); using the frames that decode", clip_id,
                    index.truncated_by)
    packets = _PacketSource(path, stream, index)
    frame_pts = index.frame_pts()
    if frame_pts:
        positions = sample_indices(len(frame_pts), cfg.num_frames)
        wanted_pts = [frame_pts[p] for p in positions]
        got = _decode_sampled_fast(codec_context, packets, index, set(wanted_pts), convert)
        if len(got) == len(set(wanted_pts)):
            return [got[p] for p in wanted_pts]
        log.debug("%s: %d of %d sampled frames decoded; decoding the whole clip",
                  clip_id, len(got), len(set(wanted_pts)))
    return _decode_sampled_full(codec_context, packets, index.num_shown, cfg.num_frames,
                                convert, clip_id)


def open_video_stream(container, clip_id: str):
    stream = find_video_stream(container)
    if stream is None:
        raise ClipError(clip_id, "no video stream")
    return stream


def load_video(path: str | Path, cfg: VideoConfig = VideoConfig(), clip_id: str | None = None,
               *, threads: int = 0) -> torch.Tensor:
    """Decode and preprocess one clip for TimeSformer.

    Returns float32 (3, T, S, S) with ``cfg.spatial_crops == 1``; with 3 crops, (3 views, 3, T,
    S, S), views ordered left/top, centre, right/bottom. The views are kept apart here: the
    extractor embeds each and averages the three embeddings (TimeSformer's multi-view test).

    ``threads``: FFmpeg decoding threads (0: one per available core; use 1 inside DataLoader
    workers, where the parallelism comes from the workers). Raises ClipError for a clip that
    cannot be read: missing, empty, corrupt, no video stream, no decodable frame.
    """
    clip_id = clip_id_for(path, clip_id)
    path = Path(path)
    with open_input(path, clip_id) as container:
        stream = open_video_stream(container, clip_id)
        index = demux_video(container, stream, PacketIndex())
        views = decode_sampled_frames(path, stream, index, cfg, clip_id, threads)
    return assemble_views(views, cfg)
