"""TSM and TSAM checkpoints in their published on-disk layouts, and a naive reference forward.

The state dicts are built from key and shape specifications written out here (torchvision's
ResNet names, TSM's ``conv1.net`` and TSAM's ``conv1.layer`` wrappers), not from extract/'s
modules. The forward is hand-written from the reference code's arithmetic: explicit
batch-norm formula, F.conv2d per layer, and the temporal shifts as loops over segments and
channel groups that read one source segment at a time. It shares no code with extract/.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

BN_EPS = 1e-5


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- key/shape specs

def resnet_spec(width: int, layers: tuple[int, ...], wrapped) -> list[tuple[str, tuple, str]]:
    """(key, shape, kind) of a torchvision-layout Bottleneck ResNet without ``fc``.

    ``wrapped(stage, block)`` names the attribute holding a shifted block's conv1 (``"net"`` for
    TSM, ``"layer"`` for TSAM) or returns None.
    """
    spec = [("conv1.weight", (width, 3, 7, 7), "conv")] + _bn("bn1", width)
    inplanes = width
    for s, depth in enumerate(layers):
        planes = width * 2 ** s
        for b in range(depth):
            p = f"layer{s + 1}.{b}."
            inner = wrapped(s, b)
            conv1 = f"{p}conv1.{inner}.weight" if inner else f"{p}conv1.weight"
            spec += [(conv1, (planes, inplanes, 1, 1), "conv")] + _bn(p + "bn1", planes)
            spec += [(p + "conv2.weight", (planes, planes, 3, 3), "conv")] + _bn(p + "bn2", planes)
            spec += [(p + "conv3.weight", (planes * 4, planes, 1, 1), "conv")] + _bn(p + "bn3", planes * 4, last=True)
            if b == 0:
                spec += [(p + "downsample.0.weight", (planes * 4, inplanes, 1, 1), "conv")]
                spec += _bn(p + "downsample.1", planes * 4)
            inplanes = planes * 4
    return spec


def _bn(name, c, last=False):
    kind = "bn_last" if last else "bn"
    return [(f"{name}.weight", (c,), kind + "_w"), (f"{name}.bias", (c,), "bn_b"),
            (f"{name}.running_mean", (c,), "bn_mean"), (f"{name}.running_var", (c,), "bn_var"),
            (f"{name}.num_batches_tracked", (), "bn_count")]


def random_state(spec, seed: int) -> dict[str, torch.Tensor]:
    """Random values for a spec, scaled so that activations stay O(1) through 16 blocks."""
    g = _gen(seed)
    sd = {}
    for key, shape, kind in spec:
        if kind == "conv":
            fan_in = shape[1] * shape[2] * shape[3]
            sd[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif kind == "bn_w":
            sd[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif kind == "bn_last_w":      # the residual branch's last BN: small, as trained ResNets have
            sd[key] = 0.3 + 0.1 * torch.randn(shape, generator=g)
        elif kind == "bn_b":
            sd[key] = 0.1 * torch.randn(shape, generator=g)
        elif kind == "bn_mean":
            sd[key] = 0.2 * torch.randn(shape, generator=g)
        elif kind == "bn_var":
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        elif kind == "bn_count":
            sd[key] = torch.tensor(12345, dtype=torch.long)
        elif kind == "linear_w":
            sd[key] = 0.05 * torch.randn(shape, generator=g)
        elif kind == "linear_b":
            sd[key] = 0.02 * torch.randn(shape, generator=g)
        else:
            raise ValueError(kind)
    return sd


def tsm_state(width=16, layers=(2, 2, 2, 2), num_classes=400, seed=0, dropout=True) -> dict:
    """TSN(is_shift, shift_place='blockres') under DataParallel: ``module.base_model.*`` with every
    block's conv1 wrapped (``conv1.net``), and ``module.new_fc.*`` (``base_model.fc`` if dropout=0)."""
    spec = resnet_spec(width, layers, lambda s, b: "net")
    head = "new_fc" if dropout else "base_model.fc"
    spec = [(f"base_model.{k}", shape, kind) for k, shape, kind in spec]
    spec += [(f"{head}.weight", (num_classes, width * 32), "linear_w"), (f"{head}.bias", (num_classes,), "linear_b")]
    return {f"module.{k}": v for k, v in random_state(spec, seed).items()}


def save_tsm_checkpoint(path, state_dict: dict) -> None:
    """main.py save_checkpoint: {'epoch', 'arch', 'state_dict', 'optimizer', 'best_prec1'}."""
    torch.save({"epoch": 50, "arch": "resnet50", "state_dict": state_dict,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0, 1]}]},
                "best_prec1": 71.2}, path)


def tsam_model_state(width=16, layers=(2, 2, 2, 2), num_classes=400, n_insert=2, m_insert=0, seed=0) -> dict:
    """lib/utils/saveloadmodels.py get_model_state: {layer name: that layer's state_dict()}."""
    spec = resnet_spec(width, layers, lambda s, b: "layer" if b % n_insert == m_insert else None)
    backbone = random_state([(f"base_model.{k}", shape, kind) for k, shape, kind in spec], seed)
    fc = random_state([("weight", (num_classes, width * 32), "linear_w"), ("bias", (num_classes,), "linear_b")],
                      seed + 1)
    return {"nn_input": {}, "nn_backbone": backbone, "last_fc": fc}


def save_tsam_checkpoint(path, model_state: dict, numpy_scores: bool = False) -> None:
    """save_timepoint: {'data_state', 'model_state', 'optimizer_state_dict'}; sklearn scores may be
    NumPy floats (``numpy_scores``), which the checkpoint allow-list admits."""
    score = np.float64(0.78) if numpy_scores else 0.78
    torch.save({"data_state": {"epoch": 50, "best_score unbalanced": score},
                "model_state": model_state,
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.05, "params": [0]}]}}, path)


# ----------------------------------------------------------------------------- naive shifts

def naive_tsm_shift(x: torch.Tensor, n_segment: int, fold_div: int) -> torch.Tensor:
    """TemporalShift.shift written per clip, segment and channel group: channels [0, fold) read the
    next segment, [fold, 2 fold) the previous one, zeros where there is none."""
    c = x.shape[1]
    fold = c // fold_div
    out = torch.empty_like(x)
    for clip in range(x.shape[0] // n_segment):
        for t in range(n_segment):
            i = clip * n_segment + t
            out[i, :fold] = x[i + 1, :fold] if t + 1 < n_segment else 0
            out[i, fold:2 * fold] = x[i - 1, fold:2 * fold] if t >= 1 else 0
            out[i, 2 * fold:] = x[i, 2 * fold:]
    return out


def naive_tsam_shift(x: torch.Tensor, n_segment: int, n_video: int, f_div: int, depth: int) -> torch.Tensor:
    """TSAM's shift_temporal per clip, distance and segment: with f = (C // f_div) // depth, group
    2d reads segment t + d + 1, group 2d + 1 segment t - d - 1, among video segments only;
    a segment with no such neighbour, and the audio segments, keep their own values."""
    c = x.shape[1]
    f = (c // f_div) // depth
    out = x.clone()
    for clip in range(x.shape[0] // n_segment):
        base = clip * n_segment
        for d in range(depth):
            back, fwd = slice(2 * d * f, (2 * d + 1) * f), slice((2 * d + 1) * f, (2 * d + 2) * f)
            for t in range(n_video):
                if t + d + 1 < n_video:
                    out[base + t, back] = x[base + t + d + 1, back]
                if t - d - 1 >= 0:
                    out[base + t, fwd] = x[base + t - d - 1, fwd]
    return out


# ----------------------------------------------------------------------------- naive ResNet

def _bn_apply(x, sd, name):
    mean, var = sd[f"{name}.running_mean"], sd[f"{name}.running_var"]
    scale = sd[f"{name}.weight"] / torch.sqrt(var + BN_EPS)
    return (x - mean[None, :, None, None]) * scale[None, :, None, None] + sd[f"{name}.bias"][None, :, None, None]


def resnet_reference(sd: dict, x: torch.Tensor, shift) -> torch.Tensor:
    """Pooled features (N, D) of a Bottleneck ResNet with torchvision's strides; ``sd`` keys
    without prefix. ``shift(stage, block, x)`` returns the shifted conv1 input, or None if that
    block is not shifted."""
    x = F.relu(_bn_apply(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for s in range(4):
        b = 0
        while f"layer{s + 1}.{b}.bn1.weight" in sd:
            p = f"layer{s + 1}.{b}."
            stride = 2 if s > 0 and b == 0 else 1
            shifted = shift(s, b, x)
            conv1 = [k for k in sd if k.startswith(p + "conv1.") and k.endswith(".weight")]  # plain or wrapped
            assert len(conv1) == 1, conv1
            out = F.conv2d(x if shifted is None else shifted, sd[conv1[0]])
            out = F.relu(_bn_apply(out, sd, p + "bn1"))
            out = F.relu(_bn_apply(F.conv2d(out, sd[p + "conv2.weight"], stride=stride, padding=1), sd, p + "bn2"))
            out = _bn_apply(F.conv2d(out, sd[p + "conv3.weight"]), sd, p + "bn3")
            identity = x
            if p + "downsample.0.weight" in sd:
                identity = _bn_apply(F.conv2d(x, sd[p + "downsample.0.weight"], stride=stride), sd, p + "downsample.1")
            x = F.relu(out + identity)
            b += 1
    return x.mean(dim=(2, 3))


def tsm_reference(state_dict: dict, frames: torch.Tensor, fold_div: int = 8, shift: bool = True):
    """TSN.forward on (B, 3, T, H, W): (segment-mean features (B, D), averaged logits (B, classes)).
    ``state_dict`` as published (``module.`` keys); ``shift=False`` leaves the shifts out."""
    sd = {k[len("module."):]: v for k, v in state_dict.items()}
    base = {k[len("base_model."):]: v for k, v in sd.items() if k.startswith("base_model.")}
    head = "new_fc" if "new_fc.weight" in sd else "base_model.fc"
    b, _, t = frames.shape[:3]
    x = torch.stack([frames[i, :, j] for i in range(b) for j in range(t)])      # clip-major, segment-minor
    feats = resnet_reference(base, x, lambda s, blk, y: naive_tsm_shift(y, t, fold_div) if shift else None)
    logits = feats @ sd[f"{head}.weight"].T + sd[f"{head}.bias"]
    feats, logits = feats.view(b, t, -1), logits.view(b, t, -1)
    return feats.mean(dim=1), logits.mean(dim=1)


def tsam_reference(model_state: dict, frames: torch.Tensor, spectrogram: torch.Tensor, f_div=4, shift_depth=4,
                   n_insert=2, m_insert=0):
    """VCM.forward on frames (B, 3, T, H, W) and spectrogram (B, 3, H, W): (video features,
    audio features, logits). ``model_state`` as saved: {'nn_backbone': ..., 'last_fc': ...}."""
    base = {k[len("base_model."):]: v for k, v in model_state["nn_backbone"].items()}
    b, _, t = frames.shape[:3]
    n = t + 1
    x = torch.stack([frames[i, :, j] if j < t else spectrogram[i] for i in range(b) for j in range(n)])

    def shift(stage, block, y):
        return naive_tsam_shift(y, n, t, f_div, shift_depth) if block % n_insert == m_insert else None

    feats = resnet_reference(base, x, shift).view(b, n, -1)
    fc = model_state["last_fc"]
    logits = feats.mean(dim=1) @ fc["weight"].T + fc["bias"]
    return feats[:, :t].mean(dim=1), feats[:, t], logits


# ----------------------------------------------------------------------------- TSAM's audio image

def hz_to_mel_htk(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz_htk(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangles on the HTK mel scale from 0 Hz to sample_rate // 2, peak 1,
    FFT bins placed at linspace(0, sample_rate // 2, n_fft // 2 + 1) as torchaudio's melscale_fbanks."""
    freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    edges = mel_to_hz_htk(np.linspace(hz_to_mel_htk(0.0), hz_to_mel_htk(sample_rate / 2), n_mels + 2))
    fb = np.zeros((freqs.size, n_mels))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (freqs - lo) / (mid - lo)
        falling = (hi - freqs) / (hi - mid)
        fb[:, m] = np.maximum(0.0, np.minimum(rising, falling))
    return fb


def power_spectrogram(wave: np.ndarray, n_fft: int, win_length: int, hop_length: int) -> np.ndarray:
    """|STFT|^2, (n_fft // 2 + 1, frames): periodic Hann window of win_length centred in n_fft zeros,
    the signal reflect-padded by n_fft // 2 on both sides, a frame every hop_length samples."""
    n = np.arange(win_length)
    window = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    window[left:left + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * n / win_length)
    padded = np.pad(np.asarray(wave, dtype=np.float64), n_fft // 2, mode="reflect")
    frames = 1 + (padded.size - n_fft) // hop_length
    spec = np.empty((n_fft // 2 + 1, frames))
    for i in range(frames):
        segment = padded[i * hop_length:i * hop_length + n_fft] * window
        spec[:, i] = np.abs(np.fft.rfft(segment)) ** 2
    return spec


def aa_bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a bilinear resize with antialiasing as PyTorch's CPU kernel forms
    them: a triangle stretched by the scale when shrinking, centres (i + 0.5) * scale, taps in
    [int(centre - support + 0.5), int(centre + support + 0.5)), normalised, all in float32."""
    f32 = np.float32
    scale = f32(n_in) / f32(n_out)
    support, inv = (scale, f32(1) / scale) if scale >= 1 else (f32(1), f32(1))
    weights = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        centre = scale * f32(i + 0.5)
        lo, hi = max(int(centre - support + f32(0.5)), 0), min(int(centre + support + f32(0.5)), n_in)
        taps = np.arange(lo, hi, dtype=np.float32)
        w = np.maximum(f32(0), f32(1) - np.abs((taps - centre + f32(0.5)) * inv)).astype(np.float32)
        weights[i, lo:hi] = w / w.sum(dtype=np.float32)
    return weights


def aa_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D image resized with :func:`aa_bilinear_weights` along each axis."""
    rows = aa_bilinear_weights(image.shape[0], size[0]).astype(np.float64)
    cols = aa_bilinear_weights(image.shape[1], size[1]).astype(np.float64)
    return rows @ np.asarray(image, dtype=np.float64) @ cols.T


def tsam_audio_reference(wave: np.ndarray, sample_rate: int, n_mels: int = 224) -> np.ndarray:
    """wafeform_to_spectrogram_torch for one segment, in float64 NumPy: (3, 224, 224)."""
    out = []
    for w_ms, h_ms in ((25, 10), (50, 25), (100, 50)):
        win, hop = int(round(w_ms * sample_rate / 1000)), int(round(h_ms * sample_rate / 1000))
        mel = mel_filterbank(sample_rate, 4800, n_mels).T @ power_spectrogram(wave, 4800, win, hop)
        out.append(aa_resize(np.log(mel + 1e-6), (224, 224)))
    return np.stack(out)
