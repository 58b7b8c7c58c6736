"""VideoConfig: what a video backbone's input is made of, validated once (see data/video.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Mapping

import numpy as np

from .colour import check_yuv_matrix
from .sampling import check_sampling_options, sample_frames
from .spatial import INTERPOLATIONS, RESIZE_BACKENDS


@dataclass(frozen=True)
class VideoConfig:
    """Video input: ``num_frames`` frames picked by the ``sampling`` rule, the short side resized
    to ``resize`` (None: ``img_size``), ``img_size`` square crop(s), ``(x / 255 - mean) / std``.

    Defaults (unchanged from earlier versions): TimeSformer's resize/crop/normalisation, its
    three-crop test view with ``spatial_crops=3``, alphafuse's uniform sampling. With one crop
    the default is the centre of that three-crop view; TimeSformer's own one-crop test
    (timesformer/datasets/kinetics.py, ``TEST.NUM_SPATIAL_CROPS == 1``) scales the short side
    to ``DATA.TRAIN_JITTER_SCALES[0]``: pass ``resize=256``.

    * ``spatial_crops``: 1 (centre) or 3 (left/centre/right for landscape, top/centre/bottom for
      portrait: ``uniform_crop``'s spatial_idx 0, 1, 2), torch backend only.
    * ``resize_backend``: "torch" (TimeSformer: float bilinear ``interpolate``) or "pil"
      (torchvision ``Resize`` + ``CenterCrop`` on a PIL image: CAV-MAE, TSM); see data/spatial.py.
    * ``interpolation``: "bilinear", or "bicubic" (pil backend only).
    * ``jpeg_quality``: pil backend only; a JPEG round trip of the cropped frame at this
      quality (CAV-MAE's frames are JPEG files written at Pillow's default, 75), None: none.
    * ``sampling`` / ``sampling_options``: a rule of data/sampling.py and its options.
    * ``mean`` (0, 0, 0) with ``std`` (1, 1, 1) gives plain ``[0, 1]`` pixels (TSAM).
    * ``yuv_matrix``: how decoded YUV becomes RGB (data/colour.py): "stream", the stream's
      tagged matrix (PyAV's conversion: TimeSformer), or "bt601" whatever the tag (OpenCV 4.6:
      CAV-MAE's frame extraction).
    * ``temporal_views``: K clips of ``num_frames`` each, the sampling rule's views 0..K-1
      (TimeSformer's TEST.NUM_ENSEMBLE_VIEWS, TSAM's "16 x 10 clips"); with S spatial crops a
      clip gives K * S views, temporal-major (view k * S + s).
    """

    num_frames: int = 8
    img_size: int = 224
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    spatial_crops: int = 1
    resize: int | None = None
    interpolation: str = "bilinear"
    resize_backend: str = "torch"
    jpeg_quality: int | None = None
    sampling: str = "uniform"
    sampling_options: tuple = ()  # given as a dict; kept as sorted (name, value) pairs (hashable)
    temporal_views: int = 1
    yuv_matrix: str = "stream"

    def __post_init__(self):
        for name in ("num_frames", "img_size", "temporal_views"):
            _set(self, name, _positive_int(name, getattr(self, name)))
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"VideoConfig.{name} needs one value per RGB channel, got {value!r}")
            _set(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"VideoConfig.std must be positive, got {self.std!r}")
        if self.spatial_crops not in (1, 3):
            raise ValueError(f"VideoConfig.spatial_crops must be 1 or 3, got {self.spatial_crops!r}")
        if self.resize is not None:
            _set(self, "resize", _positive_int("resize", self.resize))
            if self.resize < self.img_size:
                raise ValueError(f"VideoConfig.resize must be at least img_size ({self.img_size}): "
                                 f"the crop comes out of the resized frame, got {self.resize}")
        for name, allowed in (("interpolation", INTERPOLATIONS), ("resize_backend", RESIZE_BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"VideoConfig.{name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if self.resize_backend == "torch" and self.interpolation != "bilinear":
            raise ValueError(f"VideoConfig.interpolation={self.interpolation!r} needs "
                             "resize_backend='pil' (the torch backend is TimeSformer's bilinear)")
        if self.resize_backend == "pil" and self.spatial_crops != 1:
            raise ValueError("VideoConfig.spatial_crops=3 needs resize_backend='torch' "
                             "(the pil backend is torchvision's CenterCrop)")
        check_yuv_matrix("VideoConfig.yuv_matrix", self.yuv_matrix)
        if self.jpeg_quality is not None:
            _set(self, "jpeg_quality", _positive_int("jpeg_quality", self.jpeg_quality))
            if self.jpeg_quality > 100 or self.resize_backend != "pil":
                raise ValueError(f"VideoConfig.jpeg_quality must be 1..100 with resize_backend='pil',"
                                 f" got {self.jpeg_quality} with {self.resize_backend!r}")
        options = self.sampling_options
        options = dict(options.items() if isinstance(options, Mapping) else options)
        for key, value in options.items():
            if not isinstance(value, (int, float, str, bool)) and value is not None:
                raise ValueError(f"VideoConfig.sampling_options[{key!r}] must be a number or a "
                                 f"string, got {value!r}")
        try:
            check_sampling_options(self.sampling, options)
            # A dry run catches option values the rule refuses (e.g. cavmae's frame counts).
            for view in range(self.temporal_views):
                sample_frames(self.sampling, 300, self.num_frames, fps=30.0, view=view,
                              num_views=self.temporal_views, **options)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"VideoConfig.sampling={self.sampling!r}: {exc}") from None
        _set(self, "sampling_options", tuple(sorted(options.items())))

    @property
    def short_side(self) -> int:
        """The frame's short side after resizing: ``resize``, else ``img_size``."""
        return self.img_size if self.resize is None else self.resize

    @property
    def sampling_kwargs(self) -> dict:
        return dict(self.sampling_options)

    def to_dict(self) -> dict:
        """JSON-serialisable; stored with the cache to detect mismatched preprocessing."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["sampling_options"] = self.sampling_kwargs
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VideoConfig":
        """Inverse of ``to_dict``. A dict written before ``resize``, ``interpolation``,
        ``resize_backend``, ``jpeg_quality``, ``sampling`` and ``yuv_matrix`` existed gets their
        defaults, which are what that version did (uniform sampling, the img_size short side,
        bilinear, the stream's matrix)."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"VideoConfig has no field {', '.join(unknown)}")
        return cls(**d)

    @property
    def views(self) -> int:
        """Views per clip: temporal views times spatial crops."""
        return self.temporal_views * self.spatial_crops

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one clip's tensor: (3, T, S, S), or (views, 3, T, S, S) with several views."""
        one = (3, self.num_frames, self.img_size, self.img_size)
        return one if self.views == 1 else (self.views,) + one


def _set(cfg, name, value) -> None:
    object.__setattr__(cfg, name, value)  # normalising a frozen dataclass's field


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"VideoConfig.{name} must be a positive integer, got {value!r}")
    return int(value)
