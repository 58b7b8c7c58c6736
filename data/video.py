"""Video clips to model input: PyAV decoding of only the sampled frames, then resize/crop/normalise.

What a backbone sees is declared by its ``VideoConfig`` (nothing model-specific lives here):

* Temporal sampling: a named rule of data/sampling.py over the ``n`` frames the clip presents.
  ``n`` is counted from the container's packets, not taken from metadata, which is wrong for
  variable-frame-rate clips and for mp4s cut with an edit list (their pre-roll frames are
  decoded but never shown, so they are not counted). Default "uniform":
  ``rint(linspace(0, n - 1, num_frames))``; "timesformer_window" is TimeSformer's decoder window
  on the counted frames, "timesformer_pyav" the same as its PyAV path really places it (on the
  declared frame count and duration), "cavmae" CAV-MAE's frame extraction, "tsn" TSN/TSM's
  segment centres.
* Spatial (data/spatial.py): short side resized to ``resize`` (default ``img_size``) by
  TimeSformer's bilinear ``interpolate`` or by torchvision/Pillow, crop(s) of ``img_size``,
  ``(x / 255 - mean) / std``.
* Views: one centre crop -> (3, T, S, S); ``spatial_crops=3`` (left/centre/right, or
  top/centre/bottom for portrait) -> (3 views, 3, T, S, S), kept apart for the extractor,
  which embeds each view and averages the three embeddings.

Speed (this is the CPU hot path of extraction): one demux pass records every video packet
(held in memory up to a budget) and the decoder is then fed only what the sampled frames need:
for each one, from the last keyframe that precedes it in both decode and display order up to
its own packet. Packets in between that nothing needs are skipped (the in-memory equivalent of
seeking to a keyframe), and for codecs that honour it, non-reference frames that are not sampled
are dropped by the decoder (``skip_frame=NONREF``), which cannot change any other frame. Only
the sampled frames are converted to RGB (with ``cfg.yuv_matrix``, data/colour.py). If that plan misses a frame (timestamps absent or
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
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import av
import numpy as np
import torch

from ._container import clip_id_for, find_video_stream, open_input
from .colour import frame_to_rgb
from .errors import ClipError
from .sampling import StreamTiming, get_sampling, sample_frames
from .spatial import assemble_views, frame_views
from .video_config import VideoConfig

log = logging.getLogger(__name__)

# Decoders known to honour skip_frame=NONREF per packet (it is copied into frame threads at
# submit time), so toggling it between packets is exact. Others are simply decoded in full.
_NONREF_SKIP_CODECS = frozenset({"h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4"})

# Video packets held in memory after the demux pass, so decoding needs no second read. A clip
# of ten seconds is a few MB; past this budget (hours of video) the file is demuxed again.
PACKET_BUDGET_BYTES = 256 * 2**20


def sample_indices(num_available: int, num_frames: int) -> list[int]:
    """The "uniform" rule: ``rint(linspace(0, num_available - 1, num_frames))``, first and last
    frame included, repeats when too few (see data/sampling.py for the others)."""
    return sample_frames("uniform", num_available, num_frames)


def stream_fps(stream) -> float | None:
    """The stream's average frame rate (FFmpeg ``avg_frame_rate``: what TimeSformer's PyAV loader
    and OpenCV read), else FFmpeg's guess from timestamps, else None."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return None


def frame_positions(cfg: VideoConfig, num_available: int, fps: float | None, clip_id: str,
                    timing: StreamTiming | None = None) -> list[int]:
    """The frames ``cfg.sampling`` picks out of ``num_available`` (display order)."""
    if fps is None and get_sampling(cfg.sampling).needs_fps:
        raise ClipError(clip_id, f"sampling rule {cfg.sampling!r} needs the frame rate, which "
                                 "the video stream does not declare")
    # K temporal views: the rule's views 0..K-1, one after the other (decoded once, see
    # decode_sampled_frames: a frame shared by two views is decoded once).
    return [i for view in range(cfg.temporal_views)
            for i in sample_frames(cfg.sampling, num_available, cfg.num_frames, fps=fps, timing=timing,
                                   view=view, num_views=cfg.temporal_views, **cfg.sampling_kwargs)]


def preprocess_frames(frames: Sequence[np.ndarray], cfg: VideoConfig = VideoConfig()) -> torch.Tensor:
    """Already-sampled uint8 RGB frames (each (H, W, 3); sizes may differ) -> model input.

    Returns float32 (3, T, S, S), or (3 views, 3, T, S, S) when ``cfg.spatial_crops == 3``.
    """
    if len(frames) == 0:
        raise ValueError("no frames to preprocess")
    return assemble_views([frame_views(np.asarray(f), cfg) for f in frames], cfg)


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
                         pick: Callable[[int], list[int]], convert: Callable,
                         clip_id: str) -> list[np.ndarray]:
    """Decode every packet and pick the sampled frames by their position in display order.

    ``num_estimate`` (packets shown) is tried first; if a different number of frames decodes,
    a second pass picks the indices over the frames that actually exist.
    """
    total = num_estimate
    for _ in range(2):
        positions = pick(total) if total > 0 else []
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
            return frame_views(frame_to_rgb(frame, clip_id, cfg.yuv_matrix), cfg)
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
    # The timestamps go to rules defined on them; a rule sees them only when they describe
    # exactly the frames it samples from (see sampling.timesformer_pyav).
    timing = StreamTiming(tuple(frame_pts), stream.frames or 0, stream.duration) if frame_pts else None
    pick = functools.partial(frame_positions, cfg, fps=stream_fps(stream), clip_id=clip_id,
                             timing=timing)
    if frame_pts:
        positions = pick(len(frame_pts))
        wanted_pts = [frame_pts[p] for p in positions]
        got = _decode_sampled_fast(codec_context, packets, index, set(wanted_pts), convert)
        if len(got) == len(set(wanted_pts)):
            return [got[p] for p in wanted_pts]
        log.debug("%s: %d of %d sampled frames decoded; decoding the whole clip",
                  clip_id, len(got), len(set(wanted_pts)))
    return _decode_sampled_full(codec_context, packets, index.num_shown, pick, convert, clip_id)


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
