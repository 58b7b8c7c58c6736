"""Frames for TSM and TSAM: their segment sampling, test-time transforms and frame extraction.

Both references read JPEG frames that FFmpeg wrote beforehand, numbered from 1
(``img_00001.jpg`` / ``000001.jpg``); the sampling rules below return those 1-based numbers,
so image number ``k`` is the ``k - 1``-th image ffmpeg wrote.

* TSM (mit-han-lab/temporal-shift-module): ``tools/vid2img_kinetics.py`` writes every frame
  scaled to height 331; ``ops/dataset.py`` ``TSNDataSet._get_test_indices`` picks one frame per
  segment; ``test_models.py`` scales the short side to 256 (PIL bilinear), crops 224 (one centre
  crop, or three full-resolution crops), divides by 255 and normalises with ImageNet mean/std.
* TSAM (aav-antonov/TSAM): ``video2frames.py`` writes frames at 10 fps scaled to height 256;
  ``lib/dataset/video.py`` ``sample_indices_validation`` picks one frame per segment;
  ``validation_transform(crop="central")`` crops the centre square of the short side and resizes
  it to 224x224 (torchvision, bilinear with antialiasing) on ``ToTensor`` output in [0, 1].

Extraction here decodes with PyAV and runs FFmpeg's own ``scale`` (and ``fps``) filters through
libavfilter, as the ffmpeg command lines do, ended by the mjpeg encoder's pixel formats as
ffmpeg's CLI ends them. Colours: the JPEGs keep the stream's YUV (BT.709-coded on tagged
clips), widened to full range, and Pillow reads them with BT.601, so that is the conversion
here (data/colour.py, ``yuv_matrix="bt601"``). Image count: ffmpeg writes images at a constant
frame rate, repeating a frame after a timestamp gap (at a clip's end too) and dropping frames
that come too early; TSM's images are numbered by that rule (data/vsync.py), TSAM's by the
``fps`` filter's output. What still differs from the references, and why: the frames are not
written to and read back from JPEG (``-q:v 0`` is near-lossless, and libjpeg's chroma
upsampling differs from swscale's), so pixels differ by a couple of levels of 255; ffmpeg's
CLI rotates phone videos by their display matrix, which is not done here.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from ._container import clip_id_for, find_video_stream, open_input
from .colour import check_yuv_matrix, frame_to_rgb
from .errors import ClipError
from .sampling import note_frames
from .vsync import cfr_frame_map

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_UNSPECIFIED = 2   # FFmpeg's AVCOL_SPC_UNSPECIFIED


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Segment sampling (1-based frame numbers)


def tsn_test_indices(num_frames: int, num_segments: int, new_length: int = 1,
                     twice_sample: bool = False, dense: bool = False) -> list[int]:
    """TSM's test-time frame numbers, ``ops/dataset.py`` ``TSNDataSet._get_test_indices``.

    Default: ``1 + int(tick / 2 + tick * k)`` for ``k < num_segments``, ``tick = (num_frames -
    new_length + 1) / num_segments`` (the centre of each segment). ``twice_sample``: those, then
    ``1 + int(tick * k)`` (two clips). ``dense`` (I3D-style): 10 clips of ``num_segments`` frames
    ``64 // num_segments`` apart, starting at ``linspace(0, max(1, num_frames - 63) - 1, 10)``
    (truncated), wrapping modulo ``num_frames``; clip after clip.
    """
    n, t = _positive("num_frames", num_frames), _positive("num_segments", num_segments)
    new_length = _positive("new_length", new_length)
    if dense:
        sample_pos = max(1, 1 + n - 64)
        stride = 64 // t
        starts = np.linspace(0, sample_pos - 1, num=10, dtype=int).tolist()
        return _noted([(k * stride + s) % n + 1 for s in starts for k in range(t)])
    tick = (n - new_length + 1) / float(t)
    offsets = [int(tick / 2.0 + tick * k) for k in range(t)]
    if twice_sample:
        offsets += [int(tick * k) for k in range(t)]
    return _noted([o + 1 for o in offsets])


def tsn_val_indices(num_frames: int, num_segments: int, new_length: int = 1) -> list[int]:
    """TSM's validation during training, ``TSNDataSet._get_val_indices`` (not dense): segment
    centres when the clip has more than ``num_segments + new_length - 1`` frames, else frame 1."""
    n, t = _positive("num_frames", num_frames), _positive("num_segments", num_segments)
    new_length = _positive("new_length", new_length)
    if n > t + new_length - 1:
        tick = (n - new_length + 1) / float(t)
        return [int(tick / 2.0 + tick * k) + 1 for k in range(t)]
    return [1] * t


def tsam_validation_indices(num_frames: int, num_segments: int, k_frames: int = 1) -> list[int]:
    """TSAM's frame numbers, ``lib/dataset/video.py`` ``sample_indices_validation``.

    ``1 + int(tick / 2 + tick * k)``, ``tick = num_frames / num_segments``, each clamped to
    ``[k_frames // 2, num_frames - 1 - k_frames // 2]`` before adding 1. Segment ``k`` reads
    frames ``index - k_frames // 2 .. index - k_frames // 2 + k_frames - 1`` (main.py sets
    ``k_frames = 1``: just the index).
    """
    n, t = _positive("num_frames", num_frames), _positive("num_segments", num_segments)
    half = _positive("k_frames", k_frames) // 2
    tick = n / float(t)
    out = []
    for k in range(t):
        i = int(tick / 2.0 + tick * k)
        i = half if i < half else i       # the reference applies the two clamps in this order
        i = n - half - 1 if i > n - 1 - half else i
        out.append(i + 1)
    return _noted(out)


def _noted(numbers: list[int]) -> list[int]:
    """1-based frame numbers, reported 0-based to ``Backbone.preprocess(with_info=True)``."""
    note_frames([k - 1 for k in numbers])
    return numbers


# --------------------------------------------------------------------------------------------
# Test-time transforms of decoded RGB frames


def tsn_full_res_offsets(width: int, height: int, crop: int) -> list[tuple[int, int]]:
    """(x, y) of ``GroupFullResSample``'s crops: left, right, centre (``(size - crop) // 4`` steps)."""
    w_step, h_step = (width - crop) // 4, (height - crop) // 4
    return [(0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 2 * h_step)]


def tsm_test_views(frames: Sequence[np.ndarray], test_crops: int = 1, scale_size: int = 256,
                   crop_size: int = 224, full_res: bool = False,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """TSM's test transform of uint8 RGB frames (H, W, 3): float32 (3, T, S, S) for one crop,
    (3 views, 3, T, S, S) for ``test_crops=3``.

    ``test_models.py``: ``GroupScale(scale_size)`` (torchvision Resize on PIL images, bilinear)
    then ``GroupCenterCrop(S)``, or ``GroupFullResSample(S, scale_size, flip=False)``; ``S`` is
    ``crop_size``, or ``scale_size`` with ``full_res``. Then Stack, ToTorchFormatTensor (/255)
    and GroupNormalize (subtract mean, divide by std, in that order, in float32).
    """
    if test_crops not in (1, 3):
        raise ValueError(f"test_crops must be 1 or 3, got {test_crops!r}")
    if len(frames) == 0:
        raise ValueError("no frames to transform")
    size = scale_size if full_res else crop_size
    views: list[list[np.ndarray]] = [[] for _ in range(test_crops)]
    for frame in frames:
        image = TF.resize(Image.fromarray(_rgb(frame)), scale_size, interpolation=TF.InterpolationMode.BILINEAR)
        if test_crops == 1:
            views[0].append(np.asarray(TF.center_crop(image, size)))
            continue
        for view, (x, y) in zip(views, tsn_full_res_offsets(image.width, image.height, size)):
            view.append(np.asarray(image.crop((x, y, x + size, y + size))))
    out = torch.stack([torch.from_numpy(np.stack(v)).permute(3, 0, 1, 2) for v in views])  # (V, 3, T, S, S)
    out = out.float().div(255)
    for c in range(3):  # GroupNormalize's in-place sub_(m).div_(s) with Python floats, same rounding
        out[:, c].sub_(float(mean[c])).div_(float(std[c]))
    return out[0] if test_crops == 1 else out


def tsam_frame_tensor(frames: Sequence[np.ndarray], output_size: int = 224) -> torch.Tensor:
    """TSAM's validation transform of uint8 RGB frames of one size: float32 (3, T, S, S) in [0, 1].

    ``load_image`` (``T.ToTensor``: /255), ``validation_transform(crop="central")``:
    ``T.CenterCrop((s, s))`` with ``s`` the short side, then ``T.Resize((S, S))`` (bilinear,
    antialiased: torchvision's default for tensors), on the stacked frames as the reference does.
    """
    if len(frames) == 0:
        raise ValueError("no frames to transform")
    x = torch.stack([TF.to_tensor(_rgb(f)) for f in frames])          # (T, 3, H, W)
    short = min(x.shape[-2:])
    x = TF.center_crop(x, [short, short])
    x = TF.resize(x, [output_size, output_size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return x.transpose(0, 1).contiguous()


def _rgb(frame) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB frame, got {frame.dtype} {frame.shape}")
    return frame


# --------------------------------------------------------------------------------------------
# Frame extraction with PyAV (the ffmpeg command lines of the references, without the JPEGs)


def _video_stream(container, clip_id: str, threads: int):
    stream = find_video_stream(container)
    if stream is None:
        raise ClipError(clip_id, "no video stream")
    if stream.codec_context is None:
        raise ClipError(clip_id, "no decoder for this video codec")
    stream.codec_context.thread_type = "AUTO"
    stream.codec_context.thread_count = max(0, int(threads))
    return stream


def _decoded(container, stream):
    """Every decodable frame in display order. A packet the decoder rejects is skipped and a
    truncated file ends where it breaks, keeping the frames before, as ffmpeg does."""
    try:
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except (av.InvalidDataError, av.EOFError):
                continue
    except av.FFmpegError:
        pass
    try:
        yield from stream.codec_context.decode(None)
    except av.FFmpegError:
        return


class _Filter:
    """An FFmpeg filter chain (``"scale=-1:331"``, ``"fps=10,scale=-1:256"``) run by libavfilter.

    ``untag``: frames enter without their matrix tag. libavfilter 11's ``scale`` converts YUV
    from the frame's tagged matrix to its output link's (BT.601 here, as the buffer source is
    untagged); ffmpeg 5.1's swscale never converted between YUV matrices, so its JPEGs keep the
    stream's YUV values, only widened to full range.
    """

    def __init__(self, stream, chain: str, untag: bool = False):
        self.untag = untag
        self.graph = av.filter.Graph()
        node = self.graph.add_buffer(template=stream)
        for item in chain.split(","):
            name, _, args = item.partition("=")
            nxt = self.graph.add(name, args) if args else self.graph.add(name)
            node.link_to(nxt)
            node = nxt
        node.link_to(self.graph.add("buffersink"))
        self.graph.configure()

    def __call__(self, frame) -> list:
        """Push a frame (None: end of stream) and return what comes out."""
        if self.untag and frame is not None:
            frame.colorspace = _UNSPECIFIED
        self.graph.push(frame)
        out = []
        while True:
            try:
                out.append(self.graph.pull())
            except (av.BlockingIOError, av.EOFError):
                return out


# ffmpeg's mjpeg encoder takes these formats (fftools/ffmpeg_filter.c
# get_compliance_normal_pix_fmts): its CLI ends the filter chain with them, and the scale
# filter widens the limited range into them without touching the matrix.
_JPEG_FORMATS = "format=yuvj420p|yuvj422p|yuvj444p"


def _filter(stream, filters: str, yuv_matrix: str) -> _Filter:
    """The references' filter chain. "bt601": as ffmpeg's CLI runs it for JPEGs (ended by the
    encoder's formats, the stream's YUV kept), for Pillow's BT.601 to read; "stream": the chain
    alone, which converts tagged frames to BT.601 YUV, read back with that same matrix."""
    if yuv_matrix == "bt601":
        return _Filter(stream, f"{filters},{_JPEG_FORMATS}", untag=True)
    return _Filter(stream, filters)


def _image_sources(container, stream, timestamps: list) -> list[int]:
    """The decoded frame each of TSM's images shows: data/vsync.py's rule for ffmpeg's CFR
    output; one image per frame when a frame has no timestamp to place it by."""
    if any(t is None for t in timestamps):
        return list(range(len(timestamps)))
    return cfr_frame_map(timestamps, stream.time_base, stream.guessed_rate, container.start_time,
                         single_stream=len(container.streams) == 1)


def decode_tsm_frames(path: str | Path, num_segments: int = 8, height: int = 331, clip_id: str | None = None,
                      threads: int = 0, twice_sample: bool = False, dense: bool = False,
                      yuv_matrix: str = "bt601") -> list[np.ndarray]:
    """The frames TSM's test reads for one clip: uint8 RGB (H, W, 3) in sampling order.

    ``tools/vid2img_kinetics.py`` (``ffmpeg -vf scale=-1:331 -q:v 0 img_%05d.jpg``) numbers
    the images ffmpeg writes: every decoded frame, placed on a constant-frame-rate grid by its
    timestamp, so a frame after a gap is written twice (data/vsync.py). :func:`tsn_test_indices`
    over the image count picks images; only the decoded frames they show are scaled (FFmpeg's
    ``scale`` filter, per frame) and converted to RGB (``yuv_matrix``, data/colour.py: "bt601"
    is what Pillow makes of ffmpeg's JPEGs). The timestamps are first taken from the packets
    and, if decoding yields other frames, the clip is decoded again with the real ones.
    """
    clip_id = clip_id_for(path, clip_id)
    check_yuv_matrix("yuv_matrix", yuv_matrix)
    with open_input(path, clip_id) as container:
        stream = _video_stream(container, clip_id, threads)
        shown = [p.pts for p in container.demux(stream) if p.size and not p.is_discard]
    timestamps = sorted(shown) if None not in shown else shown
    for _ in range(2):
        with open_input(path, clip_id) as container:
            stream = _video_stream(container, clip_id, threads)
            sources = _image_sources(container, stream, timestamps) if timestamps else []
            numbers = tsn_test_indices(len(sources), num_segments, twice_sample=twice_sample,
                                       dense=dense) if sources else []
            wanted = {sources[k - 1] for k in numbers}
            scale = _filter(stream, f"scale=-1:{height}", yuv_matrix)
            got, decoded = {}, []
            for i, frame in enumerate(_decoded(container, stream)):
                if i in wanted:
                    got[i] = frame_to_rgb(scale(frame)[0], clip_id, yuv_matrix)
                decoded.append(frame.pts)
        if not decoded:
            raise ClipError(clip_id, "no decodable video frames")
        if decoded == timestamps:
            return [got[sources[k - 1]] for k in numbers]
        timestamps = decoded
    raise ClipError(clip_id, "video decoding gave different frames on each pass")


def decode_tsam_frames(path: str | Path, num_segments: int = 16, fps: int = 10, height: int = 256,
                       clip_id: str | None = None, threads: int = 0,
                       yuv_matrix: str = "bt601") -> list[np.ndarray]:
    """The frames TSAM's validation reads for one clip: uint8 RGB (H, W, 3) in sampling order.

    ``video2frames.py`` (``ffmpeg -vf "scale=-1:256,fps=10" -q:v 0``) through libavfilter
    (``fps`` first: it only picks frames, and scaling fewer is cheaper; the output is the same),
    then :func:`tsam_validation_indices` over the number of frames the filter gave, converted to
    RGB with ``yuv_matrix`` (data/colour.py: "bt601" is what Pillow makes of ffmpeg's JPEGs).
    """
    clip_id = clip_id_for(path, clip_id)
    check_yuv_matrix("yuv_matrix", yuv_matrix)
    with open_input(path, clip_id) as container:
        stream = _video_stream(container, clip_id, threads)
        chain = _filter(stream, f"fps={fps},scale=-1:{height}", yuv_matrix)
        frames = list(itertools.chain.from_iterable(chain(f) for f in _decoded(container, stream)))
        frames += chain(None)
    if not frames:
        raise ClipError(clip_id, "no decodable video frames")
    return [frame_to_rgb(frames[k - 1], clip_id, yuv_matrix)
            for k in tsam_validation_indices(len(frames), num_segments)]


def load_tsm_frames(path: str | Path, num_segments: int = 8, test_crops: int = 1, full_res: bool = False,
                    clip_id: str | None = None, threads: int = 0, yuv_matrix: str = "bt601") -> torch.Tensor:
    """One clip as TSM's test feeds it: (3, T, 224, 224), or (3 views, 3, T, S, S) with 3 crops."""
    frames = decode_tsm_frames(path, num_segments, clip_id=clip_id, threads=threads, yuv_matrix=yuv_matrix)
    return tsm_test_views(frames, test_crops=test_crops, full_res=full_res)


def load_tsam_frames(path: str | Path, num_segments: int = 16, clip_id: str | None = None,
                     threads: int = 0, yuv_matrix: str = "bt601") -> torch.Tensor:
    """One clip as TSAM's validation feeds it: (3, T, 224, 224) in [0, 1]."""
    return tsam_frame_tensor(decode_tsam_frames(path, num_segments, clip_id=clip_id, threads=threads,
                                                yuv_matrix=yuv_matrix))
