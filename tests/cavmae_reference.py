"""CAV-MAE checkpoints in the published layouts (random weights) and a naive reference forward.

The state dicts are built from the key names and shapes of YuanGongND/cav-mae's ``CAVMAE``
(pretraining, with its MAE decoder) and ``CAVMAEFT`` (fine-tuned, with ``mlp_head``) as saved
from ``torch.nn.DataParallel`` (``module.`` keys), NOT from this project's modules. The reference
forward follows src/models/cav_mae.py one clip at a time in float64: patches cut out by hand and
projected with a matrix product (no convolution), LayerNorm from its formula, attention one head
at a time, erf GELU written out. It shares no code with ``extract/``.
"""
from __future__ import annotations

import math

import torch

LN_EPS = 1e-5  # nn.LayerNorm's default: the reference's norm_layer=nn.LayerNorm
BLOCK_NORMS = ("norm1", "norm1_a", "norm1_v", "norm2", "norm2_a", "norm2_v")


def _block_spec(prefix: str, dim: int) -> dict[str, tuple]:
    spec = {}
    for name in BLOCK_NORMS:
        spec[f"{prefix}{name}.weight"] = ("norm", (dim,))
        spec[f"{prefix}{name}.bias"] = ("norm_bias", (dim,))
    for name, shape in (("attn.qkv", (3 * dim, dim)), ("attn.proj", (dim, dim)),
                        ("mlp.fc1", (4 * dim, dim)), ("mlp.fc2", (dim, 4 * dim))):
        spec[f"{prefix}{name}.weight"] = ("linear", shape)
        spec[f"{prefix}{name}.bias"] = ("bias", shape[:1])
    return spec


def cavmae_spec(layout: str, dim=64, specific_depth=2, unified_depth=1, audio_length=1024,
                num_classes=309, decoder_dim=32, decoder_depth=1) -> dict[str, tuple]:
    """Key -> (kind, shape) of ``CAVMAE`` (layout "pretrained") or ``CAVMAEFT`` ("finetuned")."""
    n_a, n_v = audio_length * 128 // 256, (224 // 16) ** 2
    spec = {"patch_embed_a.proj.weight": ("linear", (dim, 1, 16, 16)), "patch_embed_a.proj.bias": ("bias", (dim,)),
            "patch_embed_v.proj.weight": ("linear", (dim, 3, 16, 16)), "patch_embed_v.proj.bias": ("bias", (dim,)),
            "modality_a": ("embed", (1, 1, dim)), "modality_v": ("embed", (1, 1, dim)),
            "pos_embed_a": ("embed", (1, n_a, dim)), "pos_embed_v": ("embed", (1, n_v, dim))}
    for tower, depth in (("blocks_a", specific_depth), ("blocks_v", specific_depth), ("blocks_u", unified_depth)):
        for i in range(depth):
            spec.update(_block_spec(f"{tower}.{i}.", dim))
    for name in ("norm_a", "norm_v", "norm"):
        spec[f"{name}.weight"], spec[f"{name}.bias"] = ("norm", (dim,)), ("norm_bias", (dim,))
    if layout == "pretrained":
        d = decoder_dim
        spec.update({"decoder_embed.weight": ("linear", (d, dim)), "decoder_embed.bias": ("bias", (d,)),
                     "mask_token": ("embed", (1, 1, d)),
                     "decoder_modality_a": ("embed", (1, 1, d)), "decoder_modality_v": ("embed", (1, 1, d)),
                     "decoder_pos_embed_a": ("embed", (1, n_a, d)), "decoder_pos_embed_v": ("embed", (1, n_v, d))})
        for i in range(decoder_depth):
            spec.update(_block_spec(f"decoder_blocks.{i}.", d))
        spec.update({"decoder_norm.weight": ("norm", (d,)), "decoder_norm.bias": ("norm_bias", (d,)),
                     "decoder_pred_a.weight": ("linear", (256, d)), "decoder_pred_a.bias": ("bias", (256,)),
                     "decoder_pred_v.weight": ("linear", (768, d)), "decoder_pred_v.bias": ("bias", (768,))})
    elif layout == "finetuned":
        spec.update({"mlp_head.0.weight": ("norm", (dim,)), "mlp_head.0.bias": ("norm_bias", (dim,)),
                     "mlp_head.1.weight": ("linear", (num_classes, dim)), "mlp_head.1.bias": ("bias", (num_classes,))})
    else:
        raise ValueError(layout)
    return spec


_SCALE = {"norm": 0.1, "norm_bias": 0.1, "bias": 0.02, "embed": 0.5}


def cavmae_state(layout: str, seed=0, **sizes) -> dict[str, torch.Tensor]:
    """A ``module.``-prefixed state dict of random weights following :func:`cavmae_spec`."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, (kind, shape) in cavmae_spec(layout, **sizes).items():
        r = torch.randn(*shape, generator=g)
        if kind == "linear":                       # unit-variance outputs, so 12 blocks stay in range
            r.mul_(1 / math.sqrt(math.prod(shape[1:])))
        else:
            r.mul_(_SCALE[kind]).add_(1.0 if kind == "norm" else 0.0)
        sd["module." + key] = r
    return sd


# ----------------------------------------------------------------------------- reference forward

def _layer_norm(x, sd, name):
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + LN_EPS) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _linear(x, sd, name):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _attention(x, sd, name, heads):
    D = x.shape[1]
    hd = D // heads
    qkv = _linear(x, sd, f"{name}.qkv")
    q, k, v = qkv[:, :D], qkv[:, D:2 * D], qkv[:, 2 * D:]
    outs = []
    for h in range(heads):
        s = slice(h * hd, (h + 1) * hd)
        outs.append(torch.softmax((q[:, s] * hd ** -0.5) @ k[:, s].T, dim=-1) @ v[:, s])
    return _linear(torch.cat(outs, dim=1), sd, f"{name}.proj")


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _block(x, sd, p, heads, modality):
    """src/models/cav_mae.py Block.forward: modality None -> norm1/norm2, 'a' -> *_a, 'v' -> *_v."""
    sfx = {None: "", "a": "_a", "v": "_v"}[modality]
    x = x + _attention(_layer_norm(x, sd, f"{p}norm1{sfx}"), sd, f"{p}attn", heads)
    return x + _linear(_gelu(_linear(_layer_norm(x, sd, f"{p}norm2{sfx}"), sd, f"{p}mlp.fc1")), sd, f"{p}mlp.fc2")


def _depth(sd, tower):
    return 1 + max(int(k.split(".")[1]) for k in sd if k.startswith(tower + "."))


def _patches(image, weight, bias):
    """Non-overlapping 16x16 patches of image (C, H, W), row-major, each projected: (H/16 * W/16, D)."""
    C, H, W = image.shape
    w = weight.reshape(weight.shape[0], -1)
    tokens = []
    for r in range(H // 16):
        for c in range(W // 16):
            tokens.append(w @ image[:, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16].reshape(-1) + bias)
    return torch.stack(tokens)


def cavmae_reference(state_dict: dict, fbank: torch.Tensor, frame: torch.Tensor, heads: int,
                     dtype=torch.float64) -> dict:
    """One clip: fbank (T, 128), frame (3, 224, 224) -> the pooled embeddings, the final-norm tokens
    and, for a fine-tuned file, the logits of every CAVMAEFT.forward mode. ``state_dict`` as
    published (``module.`` keys). float64 by default; float32 keeps base-size tests fast.
    """
    sd = {k[len("module."):]: v.to(dtype) for k, v in state_dict.items()}
    # a.unsqueeze(1).transpose(2, 3): the fbank as a 1 x 128 x T image, frequency as height.
    a = _patches(fbank.to(dtype).T[None], sd["patch_embed_a.proj.weight"], sd["patch_embed_a.proj.bias"])
    a = a + sd["pos_embed_a"][0] + sd["modality_a"][0]
    v = _patches(frame.to(dtype), sd["patch_embed_v.proj.weight"], sd["patch_embed_v.proj.bias"])
    v = v + sd["pos_embed_v"][0] + sd["modality_v"][0]
    for i in range(_depth(sd, "blocks_a")):
        a = _block(a, sd, f"blocks_a.{i}.", heads, None)
    for i in range(_depth(sd, "blocks_v")):
        v = _block(v, sd, f"blocks_v.{i}.", heads, None)

    def unified_tokens(x, modality, norm):
        for i in range(_depth(sd, "blocks_u")):
            x = _block(x, sd, f"blocks_u.{i}.", heads, modality)
        return _layer_norm(x, sd, norm)

    def unified(x, modality, norm):
        return unified_tokens(x, modality, norm).mean(dim=0)

    # CAVMAEFT.forward 'multimodal': torch.cat((a, v), dim=1), audio tokens first.
    tokens = {"audio": unified_tokens(a, "a", "norm_a"), "video": unified_tokens(v, "v", "norm_v"),
              "joint": unified_tokens(torch.cat([a, v]), None, "norm")}
    out = {name: t.mean(dim=0) for name, t in tokens.items()}
    out["tokens"] = tokens
    if "mlp_head.1.weight" in sd:
        def head(x):
            return _linear(_layer_norm(x, sd, "mlp_head.0"), sd, "mlp_head.1")
        out["logits"] = {"multimodal": head(out["joint"]), "audioonly": head(out["audio"]),
                         "videoonly": head(out["video"]),
                         "missingaudioonly": head((unified(a, None, "norm") + out["audio"]) / 2),
                         "missingvideoonly": head((unified(v, None, "norm") + out["video"]) / 2)}
    return out


def sincos_reference(dim: int, rows: int, cols: int) -> torch.Tensor:
    """src/models/pos_embed.py get_2d_sincos_pos_embed(dim, rows, cols), one entry at a time.

    Its meshgrid(grid_w, grid_h) puts the width coordinate first, so for row-major token
    m = r * cols + c the first dim/2 channels encode c and the last dim/2 encode r.
    """
    quarter = dim // 4
    table = torch.zeros(rows * cols, dim, dtype=torch.float64)
    for r in range(rows):
        for c in range(cols):
            for half, pos in ((0, c), (1, r)):
                for k in range(quarter):
                    angle = pos / 10000 ** (k / quarter)
                    table[r * cols + c, half * 2 * quarter + k] = math.sin(angle)
                    table[r * cols + c, half * 2 * quarter + quarter + k] = math.cos(angle)
    return table
