"""Checkpoints in the published on-disk layouts, with random weights, and a naive reference forward.

The state dicts are built from the official key names and shapes (not from this project's
modules), and the reference forwards below follow the published code's arithmetic one sequence
at a time (explicit loops over positions and frames, eager attention, hand-written nearest
resizing), so they share no reshaping logic with ``extract/``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-6


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _linear(g, out_dim, in_dim, std=0.1):
    return torch.randn(out_dim, in_dim, generator=g) * std, torch.randn(out_dim, generator=g) * 0.02


def _norm(g, dim):
    return 1 + 0.1 * torch.randn(dim, generator=g), 0.1 * torch.randn(dim, generator=g)


def _block(g, prefix, dim, temporal):
    sd = {}
    parts = [("norm1", "norm"), ("attn.qkv", (3 * dim, dim)), ("attn.proj", (dim, dim))]
    if temporal:
        parts += [("temporal_norm1", "norm"), ("temporal_attn.qkv", (3 * dim, dim)),
                  ("temporal_attn.proj", (dim, dim)), ("temporal_fc", (dim, dim))]
    parts += [("norm2", "norm"), ("mlp.fc1", (4 * dim, dim)), ("mlp.fc2", (dim, 4 * dim))]
    for name, shape in parts:
        w, b = _norm(g, dim) if shape == "norm" else _linear(g, *shape)
        sd[f"{prefix}{name}.weight"], sd[f"{prefix}{name}.bias"] = w, b
    return sd


def timesformer_state(dim=64, depth=2, num_frames=8, img_size=224, attention_type="divided_space_time",
                      num_classes=400, seed=0) -> dict:
    """A state dict with facebookresearch/TimeSformer's ``VisionTransformer`` key names (no prefix)."""
    g = _gen(seed)
    n = (img_size // 16) ** 2
    sd = {"cls_token": 0.5 * torch.randn(1, 1, dim, generator=g),
          "pos_embed": 0.5 * torch.randn(1, n + 1, dim, generator=g)}
    if attention_type != "space_only":
        sd["time_embed"] = 0.5 * torch.randn(1, num_frames, dim, generator=g)
    sd["patch_embed.proj.weight"] = 0.05 * torch.randn(dim, 3, 16, 16, generator=g)
    sd["patch_embed.proj.bias"] = 0.02 * torch.randn(dim, generator=g)
    for i in range(depth):
        sd.update(_block(g, f"blocks.{i}.", dim, attention_type == "divided_space_time"))
    sd["norm.weight"], sd["norm.bias"] = _norm(g, dim)
    sd["head.weight"], sd["head.bias"] = _linear(g, num_classes, dim)
    return sd


def save_pyth(path, state_dict: dict) -> None:
    """Save as SlowFast/TimeSformer's ``.pyth``: ``model.``-prefixed weights beside optimizer state and cfg."""
    torch.save({
        "epoch": 15,
        "model_state": {f"model.{k}": v for k, v in state_dict.items()},
        "optimizer_state": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                            "param_groups": [{"lr": 0.005, "momentum": 0.9, "weight_decay": 1e-4, "params": [0]}]},
        "cfg": "MODEL:\n  MODEL_NAME: vit_base_patch16_224\nTIMESFORMER:\n  ATTENTION_TYPE: divided_space_time\n",
    }, path)


def ast_state(dim=64, depth=2, f_dim=12, t_dim=101, seed=0) -> dict:
    """The state dict of YuanGongND/ast's ``ASTModel`` as wrapped by DataParallel (``module.`` keys)."""
    g = _gen(seed)
    v = {"cls_token": 0.5 * torch.randn(1, 1, dim, generator=g),
         "dist_token": 0.5 * torch.randn(1, 1, dim, generator=g),
         "pos_embed": 0.5 * torch.randn(1, f_dim * t_dim + 2, dim, generator=g),
         "patch_embed.proj.weight": 0.05 * torch.randn(dim, 1, 16, 16, generator=g),
         "patch_embed.proj.bias": 0.02 * torch.randn(dim, generator=g)}
    for i in range(depth):
        v.update(_block(g, f"blocks.{i}.", dim, temporal=False))
    v["norm.weight"], v["norm.bias"] = _norm(g, dim)
    v["head.weight"], v["head.bias"] = _linear(g, 1000, dim)          # DeiT's classifiers, unused by AST
    v["head_dist.weight"], v["head_dist.bias"] = _linear(g, 1000, dim)
    sd = {f"module.v.{k}": t for k, t in v.items()}
    sd["module.mlp_head.0.weight"], sd["module.mlp_head.0.bias"] = _norm(g, dim)
    sd["module.mlp_head.1.weight"], sd["module.mlp_head.1.bias"] = _linear(g, 527, dim)
    return sd


# ----------------------------------------------------------------------------- reference forwards

def _ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], EPS)


def _attend(x, sd, name, heads):
    """Multi-head self-attention within each sequence of x (..., L, D), heads one at a time."""
    D = x.shape[-1]
    hd = D // heads
    qkv = x @ sd[f"{name}.qkv.weight"].T + sd[f"{name}.qkv.bias"]
    q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
    outs = []
    for h in range(heads):
        s = slice(h * hd, (h + 1) * hd)
        weights = torch.softmax((q[..., s] @ k[..., s].transpose(-1, -2)) * hd ** -0.5, dim=-1)
        outs.append(weights @ v[..., s])
    return torch.cat(outs, dim=-1) @ sd[f"{name}.proj.weight"].T + sd[f"{name}.proj.bias"]


def _mlp(x, sd, name):
    h = F.gelu(x @ sd[f"{name}.fc1.weight"].T + sd[f"{name}.fc1.bias"])
    return h @ sd[f"{name}.fc2.weight"].T + sd[f"{name}.fc2.bias"]


def _plain_block(x, sd, p, heads):
    x = x + _attend(_ln(x, sd, p + "norm1"), sd, p + "attn", heads)
    return x + _mlp(_ln(x, sd, p + "norm2"), sd, p + "mlp")


def _nearest_indices(n_in, n_out):
    scale = n_in / n_out
    return [min(int(math.floor(i * scale)), n_in - 1) for i in range(n_out)]


def timesformer_reference(sd: dict, video: torch.Tensor, heads: int, attention_type: str) -> torch.Tensor:
    """Embedding of ONE clip (3, T, H, W) with the published model's arithmetic; sd without prefix."""
    _, T, H, W = video.shape
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    gh, gw = H // 16, W // 16
    pos = sd["pos_embed"][0]
    side = int(round((pos.shape[0] - 1) ** 0.5))
    rows, cols = _nearest_indices(side, gh), _nearest_indices(side, gw)
    patch_pos = [pos[1 + r * side + c] for r in rows for c in cols]       # 2-D nearest resize
    frames = []
    for t in range(T):
        fmap = F.conv2d(video[:, t][None], sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)[0]
        tokens = [fmap[:, r, c] + patch_pos[r * gw + c] for r in range(gh) for c in range(gw)]
        frames.append(torch.stack([sd["cls_token"][0, 0] + pos[0]] + tokens))
    if attention_type == "space_only":
        outs = []
        for seq in frames:
            for i in range(depth):
                seq = _plain_block(seq, sd, f"blocks.{i}.", heads)
            outs.append(seq)
        return _ln(torch.stack(outs).mean(0), sd, "norm")[0]

    time = sd["time_embed"][0]
    time = time[_nearest_indices(time.shape[0], T)]
    N = gh * gw
    cls = frames[0][0]
    x = torch.stack([torch.stack([frames[t][1 + n] + time[t] for t in range(T)]) for n in range(N)])  # (N, T, D)
    for i in range(depth):
        p = f"blocks.{i}."
        if attention_type == "joint_space_time":
            seq = _plain_block(torch.cat([cls[None], x.reshape(N * T, -1)]), sd, p, heads)
            cls, x = seq[0], seq[1:].reshape(N, T, -1)
            continue
        # Temporal attention: each patch position's T tokens form one sequence (x is (N, T, D)).
        res = _attend(_ln(x, sd, p + "temporal_norm1"), sd, p + "temporal_attn", heads)
        xt = x + res @ sd[p + "temporal_fc.weight"].T + sd[p + "temporal_fc.bias"]
        # Spatial attention: each frame's N tokens with its own copy of the class token.
        seq = torch.cat([cls.expand(T, 1, -1), xt.transpose(0, 1)], dim=1)          # (T, 1 + N, D)
        res = _attend(_ln(seq, sd, p + "norm1"), sd, p + "attn", heads)
        new_x = xt + res[:, 1:].transpose(0, 1)
        cls = cls + res[:, 0].mean(0)                        # the frames' class tokens, averaged
        seq = torch.cat([cls[None], new_x.reshape(N * T, -1)])
        seq = seq + _mlp(_ln(seq, sd, p + "norm2"), sd, p + "mlp")
        cls, x = seq[0], seq[1:].reshape(N, T, -1)
    return _ln(cls, sd, "norm")


def ast_reference(sd: dict, fbank: torch.Tensor, heads: int, fstride=10, tstride=10) -> torch.Tensor:
    """Embedding of ONE fbank (tdim, 128) as ASTModel.forward computes it before mlp_head; sd as published."""
    v = {k[len("module.v."):]: t for k, t in sd.items() if k.startswith("module.v.")}
    depth = 1 + max(int(k.split(".")[1]) for k in v if k.startswith("blocks."))
    fmap = F.conv2d(fbank.T[None, None], v["patch_embed.proj.weight"], v["patch_embed.proj.bias"],
                    stride=(fstride, tstride))[0]                 # (D, f_dim, t_dim)
    D, f_dim, t_dim = fmap.shape
    grid = v["pos_embed"][0, 2:].T.reshape(D, 12, -1)             # the checkpoint's 12 x 101 grid
    t_ckpt = grid.shape[2]
    if t_dim < t_ckpt:
        start = 50 - t_dim // 2 if t_ckpt == 101 else t_ckpt // 2 - t_dim // 2
        grid = grid[:, :, start:start + t_dim]
    elif t_dim > t_ckpt:
        grid = F.interpolate(grid[None], size=(12, t_dim), mode="bilinear")[0]
    tokens = [fmap[:, f, t] + grid[:, f, t] for f in range(f_dim) for t in range(t_dim)]
    x = torch.stack([v["cls_token"][0, 0] + v["pos_embed"][0, 0], v["dist_token"][0, 0] + v["pos_embed"][0, 1]] + tokens)
    for i in range(depth):
        x = _plain_block(x, v, f"blocks.{i}.", heads)
    x = _ln(x, v, "norm")
    return (x[0] + x[1]) / 2
