"""Spatial preprocessing of sampled frames: short-side resize, crop(s), normalise.

Two resize paths, chosen by ``VideoConfig.resize_backend``:

* ``"torch"`` (TimeSformer): timesformer/datasets/kinetics.py (test mode) normalises the uint8
  frames (``utils.tensor_normalize``: ``/255``, ``- mean``, ``/ std``) and then calls
  ``utils.spatial_sampling``: ``transform.random_short_side_scale_jitter`` with min = max =
  the short side (``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``,
  long side ``int(math.floor((float(long) / short) * size))``, no resize when the short side
  already has that size) and ``transform.uniform_crop`` (offsets ``ceil((dim - crop) / 2)``;
  spatial_idx 0 / 2 take the top / bottom of a portrait frame, the left / right of any other).
  Only the crop's pixels are computed, each from its four bilinear neighbours with PyTorch's
  weights: this equals interpolating the whole frame and cropping to ~1e-6, at a fraction of
  the cost. Bilinear only.
* ``"pil"`` (CAV-MAE, TSM): torchvision's transforms on a PIL image, as those projects run
  them: ``Resize(short side, interpolation)`` (Pillow's resampling on uint8, antialiased, the
  long side ``int(size * long / short)``), ``CenterCrop`` (offsets ``int(round((dim - crop) /
  2.0))``, Python's half-to-even), optionally a JPEG round trip (CAV-MAE stores its frames as
  JPEG with torchvision's ``save_image``), then ``ToTensor`` (``/255``) and ``Normalize``.
  Computed by torchvision and Pillow themselves, so it is their arithmetic exactly. One crop.
"""
from __future__ import annotations

import functools
import io
import math
from typing import Sequence

import numpy as np
import torch

RESIZE_BACKENDS = ("torch", "pil")
INTERPOLATIONS = ("bilinear", "bicubic")


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after scaling the short side to ``size``, long side floored (TimeSformer's
    ``random_short_side_scale_jitter``)."""
    if width < height:
        return int(math.floor(float(height) / width * size)), size
    return size, int(math.floor(float(width) / height * size))


def crop_offsets(height: int, width: int, size: int, spatial_crops: int) -> list[tuple[int, int]]:
    """(y, x) of each crop in the resized frame: ``uniform_crop``'s spatial_idx 1 alone, or 0, 1, 2."""
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
def _crop_plan(height: int, width: int, short_side: int, size: int, spatial_crops: int,
               mean: tuple[float, ...], std: tuple[float, ...]) -> list[tuple]:
    """Per crop of a (height, width) frame: source rows and columns of the four bilinear
    neighbours and the weight of each, with /255 and /std folded in, plus mean/std to subtract.
    The frames of a clip share their size, so this is computed once per clip."""
    new_h, new_w = resized_size(height, width, short_side)
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


def _torch_views(rgb: np.ndarray, cfg) -> np.ndarray:
    """TimeSformer's path (see the module docstring): float32 (views, S, S, 3).

    Only the source pixels the crops read are gathered: resizing a whole 720p frame to then keep
    a 224 square wastes most of the work, and the result equals resize-then-crop (within float
    rounding, ~1e-6) because bilinear interpolation is separable and local. NumPy on whole
    contiguous planes, not torch: these small element-wise steps gain nothing from torch's
    thread pool, whose hand-offs cost milliseconds per operation on a busy machine.
    """
    size = cfg.img_size
    plan = _crop_plan(rgb.shape[0], rgb.shape[1], cfg.short_side, size, cfg.spatial_crops,
                      cfg.mean, cfg.std)
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


def _pil_views(rgb: np.ndarray, cfg) -> np.ndarray:
    """torchvision's PIL path (see the module docstring): float32 (1, S, S, 3)."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
    image = TF.resize(Image.fromarray(rgb, mode="RGB"), cfg.short_side,
                      interpolation=mode[cfg.interpolation])
    image = TF.center_crop(image, cfg.img_size)
    if cfg.jpeg_quality is not None:
        # torchvision.utils.save_image of a ToTensor image writes back the same uint8 values
        # (x / 255 * 255 + 0.5, truncated), so the round trip is Pillow's JPEG codec alone.
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=cfg.jpeg_quality)
        buffer.seek(0)
        image = Image.open(buffer).convert("RGB")
    # ToTensor: float32 x / 255; Normalize: (x - mean) / std, both in float32.
    x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(cfg.mean, dtype=np.float32)) / np.asarray(cfg.std, dtype=np.float32)
    return x[None]


def frame_views(rgb: np.ndarray, cfg) -> np.ndarray:
    """One uint8 (H, W, 3) RGB frame -> float32 (views, S, S, 3), resized, cropped, normalised."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB frame, got {rgb.dtype} {rgb.shape}")
    if cfg.resize_backend == "pil":
        return _pil_views(np.ascontiguousarray(rgb), cfg)
    return _torch_views(rgb, cfg)


def assemble_views(per_frame: Sequence[np.ndarray], cfg) -> torch.Tensor:
    """K * T arrays (crops, S, S, 3) (K temporal views of T frames, one after the other) ->
    float32 tensor (3, T, S, S), or (K * crops, 3, T, S, S), temporal-major."""
    stacked = np.stack(per_frame, axis=1)  # (C, K*T, S, S, 3)
    crops, k = stacked.shape[0], getattr(cfg, "temporal_views", 1)
    stacked = stacked.reshape(crops, k, -1, *stacked.shape[2:]).swapaxes(0, 1)   # (K, C, T, S, S, 3)
    stacked = stacked.reshape(k * crops, *stacked.shape[2:])
    out = torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 4, 1, 2, 3)))  # (V, 3, T, S, S)
    return out[0] if out.shape[0] == 1 else out
