"""TSM, the Temporal Shift Module (Lin et al., 2019) on a ResNet-50 TSN, the frozen video backbone.

Follows mit-han-lab/temporal-shift-module: ``ops/models.py`` ``TSN`` (an ImageNet ResNet whose
``fc`` became Dropout, a ``new_fc`` classifier, average consensus over segments) with
``ops/temporal_shift.py`` ``make_temporal_shift(place='blockres')``: every Bottleneck of
layer1..4 (ResNet-50 has fewer than 23 blocks in layer3, so ``n_round`` is 1) has its ``conv1``
wrapped in ``TemporalShift(conv1, n_segment, n_div)``, which shifts ``C // n_div`` channels of the
block's residual-branch input one segment back and the next ``C // n_div`` one segment forward,
zero-filling the ends; the identity path is not shifted. Module names are those of the wrapper
(``layer1.0.conv1.net.weight``) so the published ``TSM_kinetics_RGB_resnet50_shift8_blockres_avg_
segment8_e50.pth`` loads key for key once :func:`checkpoint_filter_fn` has removed ``module.``.

The ResNet and the shift arithmetic here are shared with TSAM (``extract/tsam.py``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from alphafuse.data.colour import check_yuv_matrix
from alphafuse.data.sampling import check_single_view, register_sampling
from alphafuse.data.tsn import decode_tsm_frames, tsm_test_views

from .checkpoint import build_backbone, strip_prefixes
from .registry import Extras, InputSpec, register_backbone, register_spec

__all__ = ["TSM", "TSMFrames", "load_tsm", "tsm_options_from_filename"]

# base: torchvision's resnet50 (stem 64, Bottleneck stages 3-4-6-3). tiny: the same blocks, 16 wide
# and two deep per stage, for tests and CPU demos (every block still has channels to shift).
ARCHS = {
    "base": dict(width=64, layers=(3, 4, 6, 3)),
    "tiny": dict(width=16, layers=(2, 2, 2, 2)),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_CLASSES = 400

_REF = "mit-han-lab/temporal-shift-module"
# The input pipeline of the reference's test (test_models.py): TSMFrames below, decoding in data/tsn.py.
PREPROCESSING = {
    "frames": {
        "num_frames": "num_segments (8 for the Kinetics-400 checkpoint)",
        "source": {"fps": "native: every frame", "height": 331, "files": "img_00001.jpg, ... (1-based)",
                   "reference": "tools/vid2img_kinetics.py vid2jpg (ffmpeg -vf scale=-1:331 -q:v 0)"},
        "sampling": {"rule": "1 + int(tick / 2 + tick * k), tick = (n - new_length + 1) / num_segments; "
                             "dense_sample and twice_sample options",
                     "reference": "ops/dataset.py TSNDataSet._get_test_indices",
                     "implementation": "alphafuse.data.tsn.tsn_test_indices"},
        "resize": {"short_side": 256, "interpolation": "PIL bilinear",
                   "reference": "ops/transforms.py GroupScale(net.scale_size) (torchvision Resize on PIL)"},
        "crop": {"size": 224, "views": {1: "centre (GroupCenterCrop)",
                                        3: "left, right, centre (GroupFullResSample, flip=False)"},
                 "reference": "test_models.py --test_crops; the logits of the views are averaged (eval_video)"},
        "scale": "uint8 / 255 (ops/transforms.py ToTorchFormatTensor)",
        "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
        "normalise_reference": "ops/models.py TSN._prepare_base_model input_mean/input_std, "
                               "ops/transforms.py GroupNormalize",
        "implementation": "alphafuse.data.tsn.load_tsm_frames (decode_tsm_frames, then tsm_test_views)",
    },
}


# TSM's multi-clip tests (ops/dataset.py _get_test_indices): twice_sample is 2 clips, dense 10.
TSM_CLIPS = {1: {}, 2: {"twice_sample": True}, 10: {"dense": True}}


@register_spec
@dataclass(frozen=True)
class TSMFrames(InputSpec):
    """TSM's test input (:data:`PREPROCESSING`, decoded by data/tsn.py): one frame per segment,
    ImageNet-normalised, one centre crop or three full-resolution crops; ``temporal_views`` 1, 2
    (``twice_sample``) or 10 (``dense_sample``) clips. Views come temporal-major: (K * crops, 3, T, S, S)."""

    kind: ClassVar[str] = "tsm_frames"
    num_segments: int = 8
    test_crops: int = 1
    full_res: bool = False
    temporal_views: int = 1
    yuv_matrix: str = "bt601"     # data/colour.py: the colours of ffmpeg's JPEGs as Pillow reads them
    LEGACY: ClassVar[dict] = {"yuv_matrix": "stream"}   # caches before it converted the stream's matrix

    def __post_init__(self):
        if self.temporal_views not in TSM_CLIPS:
            raise ValueError(f"TSM's test takes 1, 2 (twice_sample) or 10 (dense_sample) clips, "
                             f"got temporal views {self.temporal_views!r}")
        check_yuv_matrix("TSMFrames.yuv_matrix", self.yuv_matrix)

    @property
    def views(self) -> int:
        return self.temporal_views * self.test_crops

    @property
    def output_shape(self) -> tuple:
        size = 256 if self.full_res else 224
        one = (3, self.num_segments, size, size)
        return one if self.views == 1 else (self.views,) + one

    def load(self, path, clip_id: str, threads: int = 0) -> torch.Tensor:
        frames = decode_tsm_frames(path, self.num_segments, clip_id=clip_id, threads=threads, yuv_matrix=self.yuv_matrix,
                                   **TSM_CLIPS[self.temporal_views])
        k, t = self.temporal_views, self.num_segments
        clips = [tsm_test_views(frames[i * t:(i + 1) * t], test_crops=self.test_crops, full_res=self.full_res)
                 for i in range(k)]
        if self.views == 1:
            return clips[0]
        return torch.cat([c if self.test_crops > 1 else c[None] for c in clips])


# The rule for VideoConfig(sampling="tsn"): TSM's segment centres on alphafuse's own decoding.
@register_sampling("tsn")
def tsn(num_available, num_frames, *, fps=None, view=0, num_views=1):
    """TSN/TSM's single-clip test sampling (temporal-shift-module ops/dataset.py,
    ``TSNDataSet._get_test_indices`` with new_length 1): the centre of each of T equal
    segments, ``int(tick / 2 + tick * i)`` with ``tick = n / T`` (the reference's 1-based
    image numbers minus one)."""
    check_single_view("tsn", num_views)
    tick = num_available / float(num_frames)
    return [int(tick / 2.0 + tick * i) for i in range(num_frames)]


# ----------------------------------------------------------------------------- shared arithmetic

def temporal_shift(x: torch.Tensor, n_segment: int, fold: int, depth: int = 1,
                   n_shifted: int | None = None, zero_ends: bool = True) -> torch.Tensor:
    """Shift channels along the segment axis of ``x`` (N * n_segment, C, H, W).

    For each distance ``l = d + 1`` (d < depth) the channel group ``[2 d fold, (2 d + 1) fold)``
    takes the values of ``l`` segments later and the next group those of ``l`` segments earlier.
    Only the first ``n_shifted`` segments take part (TSAM's audio segment comes after them and is
    left alone). Positions with no source get zeros (TSM, ``TemporalShift.shift``) or keep their
    own values (TSAM, ``TemporalShift.shift_temporal`` starts from ``x.clone()``).
    TSM's shift is ``depth=1, fold=C // fold_div``.
    """
    nt, c, h, w = x.shape
    s = n_segment if n_shifted is None else n_shifted
    v = x.view(nt // n_segment, n_segment, c, h, w)
    out = v.clone()  # clone keeps channels_last strides
    for d in range(depth):
        l, a = d + 1, 2 * d * fold
        b = a + fold
        out[:, :s - l, a:b] = v[:, l:s, a:b]
        out[:, l:s, b:b + fold] = v[:, :s - l, b:b + fold]
        if zero_ends:
            out[:, max(s - l, 0):s, a:b] = 0
            out[:, :l, b:b + fold] = 0
    return out.view(nt, c, h, w)


class TemporalShift(nn.Module):
    """TSM's wrapper around a block's ``conv1``: shift the input, then convolve (key ``conv1.net.*``)."""

    def __init__(self, net: nn.Conv2d, n_segment: int, fold_div: int = 8):
        super().__init__()
        self.net = net
        self.n_segment = n_segment
        self.fold_div = fold_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(temporal_shift(x, self.n_segment, x.shape[1] // self.fold_div))


class ResNet(nn.Module):
    """torchvision's ResNet layout (``conv1, bn1, relu, maxpool, layer1..4``; torchvision's
    ``Bottleneck`` with the stride on the 3x3 conv), pooled features out, no classifier:
    the ``base_model`` of TSN (``fc`` replaced, ``avgpool`` an ``AdaptiveAvgPool2d(1)``)."""

    def __init__(self, width: int = 64, layers: tuple[int, ...] = (3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for i, depth in enumerate(layers):
            planes, stride = width * 2 ** i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * Bottleneck.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes * Bottleneck.expansion))
            blocks = [Bottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * Bottleneck.expansion
            blocks += [Bottleneck(inplanes, planes) for _ in range(1, depth)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = inplanes
        for m in self.modules():  # torchvision's initialisation (only random-weight models see it)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_features)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        return torch.flatten(self.avgpool(x), 1)


def memory_format(model: nn.Module) -> torch.memory_format:
    """The model's memory format, which its inputs are given: channels-last as loaded (on this
    project's 2-core Xeon CPU, 1.1-1.4x faster than NCHW for ResNet-50 at batch 1 and 2, see
    benchmarks/tsm_speed.py), NCHW after ``model.to(memory_format=torch.contiguous_format)``."""
    stem = model.base_model.conv1.weight
    cl = stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def segments_to_batch(segments: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """(B, S, 3, H, W) -> (B * S, 3, H, W), segment-minor as TSN's ``input.view(-1, 3, H, W)``,
    in the memory format of the model."""
    return segments.flatten(0, 1).contiguous(memory_format=memory_format(model))


def check_frames(frames: torch.Tensor, num_segments: int, name: str) -> None:
    if frames.ndim != 5 or frames.shape[1] != 3 or frames.shape[2] != num_segments:
        raise ValueError(f"{name} expects frames of shape (B, 3, {num_segments}, H, W), got {tuple(frames.shape)}")
    if min(frames.shape[-2:]) < 32:
        raise ValueError(f"{name} needs frames of at least 32x32 pixels, got {tuple(frames.shape[-2:])}")


# ----------------------------------------------------------------------------- TSM

class TSM(nn.Module):
    """TSN with temporal shift: per-frame ResNet features, ``new_fc``, average over segments."""

    def __init__(self, num_segments: int = 8, num_classes: int = KINETICS_CLASSES, shift_div: int = 8,
                 width: int = 64, layers: tuple[int, ...] = (3, 4, 6, 3)):
        super().__init__()
        self.num_segments, self.shift_div = num_segments, shift_div
        self.base_model = ResNet(width, layers)
        for stage in self.base_model.stages():           # make_temporal_shift(place='blockres')
            for block in stage:
                block.conv1 = TemporalShift(block.conv1, num_segments, shift_div)
        self.embed_dim = self.num_features = self.base_model.num_features
        self.new_fc = nn.Linear(self.num_features, num_classes)
        nn.init.normal_(self.new_fc.weight, 0, 0.001)    # TSN._prepare_tsn
        nn.init.zeros_(self.new_fc.bias)

    @property
    def num_classes(self) -> int:
        return self.new_fc.out_features

    def reset_classifier(self, num_classes: int) -> None:
        self.new_fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) ImageNet-normalised frames -> per-segment pooled features (B, T, D):
        the output of TSN's ``base_model`` (its Dropout is the identity in eval mode)."""
        check_frames(frames, self.num_segments, "TSM")
        x = self.base_model(segments_to_batch(frames.transpose(1, 2), self))
        return x.view(frames.shape[0], self.num_segments, -1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, classes): ``new_fc`` on every segment, then ConsensusModule('avg')."""
        return self.new_fc(features).mean(dim=1)

    def embed(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"video": self.forward_features(frames).mean(dim=1)}

    def classify(self, frames: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(frames))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, D): the segment average of the features the head sees."""
        return self.embed(frames)["video"]

    # -- what extraction asks of a backbone (see extract/registry.py) --------------------------

    def embedding_shapes(self, modality: str = "video", extras: Extras = Extras()) -> dict:
        """``video`` (D,) and, for a checkpoint, its own classifier's ``logits`` (classes,)."""
        if modality != "video":
            raise ValueError(f"TSM encodes video only, not {modality!r}")
        if extras.tokens or extras.layers is not None:
            raise ValueError("the tsm backbone caches no tokens or layers; extract it without them")
        shapes = {"video": (self.embed_dim,)}
        if self.pretrained:
            shapes["logits"] = {"shape": [self.num_classes], "label_space": "backbone"}
        return shapes

    def input_specs(self, modality: str = "video", spatial_crops: int = 1) -> dict:
        """:data:`PREPROCESSING` as :class:`TSMFrames`: one centre crop, or three crops."""
        self.embedding_shapes(modality)
        return {"video": TSMFrames(num_segments=self.num_segments, test_crops=spatial_crops)}

    def extract(self, modality: str, inputs: dict, extras: Extras = Extras()) -> dict:
        features = self.forward_features(inputs["video"])
        out = {"video": features.mean(dim=1)}
        if self.pretrained:
            out["logits"] = self.forward_head(features)
        return out


def checkpoint_filter_fn(state_dict: dict, model: TSM) -> dict:
    """Adapt a published TSM state dict to ``model``.

    Removes DataParallel's ``module.``; a model trained with ``dropout=0`` kept its classifier in
    ``base_model.fc`` (TSN._prepare_tsn), renamed here to ``new_fc``. The classifier is resized to
    the checkpoint's class count (Kinetics 400, Something 174, ...): the embedding does not use
    it, ``classify`` does.
    """
    sd = strip_prefixes(state_dict, ("module.",))
    for suffix in ("weight", "bias"):
        if f"base_model.fc.{suffix}" in sd and f"new_fc.{suffix}" not in sd:
            sd[f"new_fc.{suffix}"] = sd.pop(f"base_model.fc.{suffix}")
    head = sd.get("new_fc.weight")
    if head is not None and head.ndim == 2 and head.shape[0] != model.num_classes:
        model.reset_classifier(head.shape[0])
    return sd


def _hint(sd: dict) -> str:
    if any(k.startswith(("blocks.", "cls_token", "model.blocks.", "v.blocks.")) for k in sd):
        return " (it looks like a transformer checkpoint, not a TSM ResNet)"
    if any(k.startswith("nn_backbone.") for k in sd) or "nn_backbone" in sd:
        return " (it looks like a TSAM checkpoint: use load_tsam)"
    if any(k.startswith("base_model.layer") for k in sd):
        if not any(".conv1.net." in k for k in sd):
            shifted_block = any(re.match(r"base_model\.layer\d\.\d+\.net\.", k) for k in sd)
            return (" (shift_place='block' is not supported, only 'blockres')" if shifted_block
                    else " (a TSN checkpoint without temporal shift: no conv1.net keys)")
        if any(".nl." in k or "nl_block" in k for k in sd):
            return " (non-local TSM variants are not supported)"
    return ""


def tsm_options_from_filename(name: str) -> dict:
    """load_tsm options from a published checkpoint's name, as test_models.py parses it:
    ``TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth`` -> num_segments=8, shift_div=8."""
    stem = str(name).rsplit("/", 1)[-1]
    m = re.search(r"_(resnet50)_shift(\d+)_(\w+?)_avg_segment(\d+)_", stem)
    if "RGB" not in stem or m is None or m.group(3) != "blockres" or "_nl" in stem or "tpool" in stem:
        raise ValueError(f"{stem}: not an RGB ResNet-50 blockres TSM checkpoint name "
                         "(expected like TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth)")
    return {"num_segments": int(m.group(4)), "shift_div": int(m.group(2))}


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


@register_backbone("tsm", modality="video",
                   help="TSM ResNet-50 (mit-han-lab/temporal-shift-module): segment mean of pooled features, 2048-d")
def load_tsm(checkpoint=None, num_segments: int = 8, shift_div: int = 8, arch: str = "base",
             seed: int = 0) -> TSM:
    """A frozen, eval-mode TSM: ``embed(frames)["video"]`` maps (B, 3, T, 224, 224) to (B, 2048).

    ``checkpoint``: a published ``TSM_*_RGB_resnet50_shift8_blockres_*.pth`` (``{'epoch', 'arch',
    'state_dict', 'optimizer', 'best_prec1'}``, DataParallel keys), or a plain state dict file.
    ``num_segments`` is the test-time segment count (the shift groups segments of one clip);
    ``shift_div`` the ``n_div`` of the shift (8 in every published model). ``None`` gives random
    weights from ``seed`` (with a warning). ``arch="tiny"``: a 16-wide, 2-per-stage ResNet for tests.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    _check_int("num_segments", num_segments, 1)
    _check_int("shift_div", shift_div, 2)
    config = dict(model="tsm", arch=arch, num_segments=num_segments, shift_div=shift_div,
                  shift_place="blockres", **ARCHS[arch])
    model = build_backbone(
        lambda: TSM(num_segments, KINETICS_CLASSES, shift_div, **ARCHS[arch]),
        f"TSM ({arch})", config, checkpoint, seed, checkpoint_filter_fn, hint_fn=_hint)
    model.config["num_classes"] = model.num_classes
    return model.to(memory_format=torch.channels_last)

