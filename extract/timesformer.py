"""TimeSformer (Bertasius et al., 2021), the frozen video backbone.

Parameter names follow facebookresearch/TimeSformer's ``VisionTransformer`` so that the published
``.pyth`` checkpoints load key for key once :func:`checkpoint_filter_fn` has removed the SlowFast
``model.`` prefix and the classifier. Attention runs through timm's ``Attention`` (PyTorch's
``scaled_dot_product_attention``).

Token layout, as in the reference: a CLS token, then the patch tokens of all frames ordered
patch-major, frame-minor (token ``1 + n * T + t`` is patch ``n`` of frame ``t``).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Attention, Block
from torch import nn

from alphafuse.data import VideoConfig
from alphafuse.data.sampling import register_sampling

from .checkpoint import CheckpointError, build_backbone, drop_keys, strip_prefixes
from .registry import Extras, register_backbone

__all__ = ["TimeSformer", "load_timesformer"]

ATTENTION_TYPES = ("divided_space_time", "space_only", "joint_space_time")

ARCHS = {
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "tiny": dict(embed_dim=64, depth=2, num_heads=2),
}

_norm = partial(nn.LayerNorm, eps=1e-6)

# TimeSformer's test-time input, declared beside the model: frames scaled to [0, 1] and normalised
# with Kinetics' mean and std (timesformer/config/defaults.py DATA.MEAN, DATA.STD, as
# timesformer/datasets/utils.py tensor_normalize applies them); frame count and size come from
# the model's num_frames and img_size.
PREPROCESSING = dict(mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))
# timesformer/datasets/decoder.py pyav_decode: ``frame.to_rgb().to_ndarray()``. The PyAV of its
# time (before 17) converted with swscale's default matrix, BT.601, whatever the stream's tag
# (PyAV-Org/PyAV issues #873, #2230; data/colour.py), so BT.709-tagged clips are converted so here.
YUV_MATRIX = "bt601"


# TimeSformer's temporal sampling rules (data/sampling.py is their registry; VideoConfig(sampling=...)
# and --sampling name them; the default stays alphafuse's "uniform").

@register_sampling("timesformer_window")
def timesformer_window(num_available, num_frames, *, fps, view=0, num_views=1,
                       sampling_rate=32, target_fps=30):
    """TimeSformer's test-time window (timesformer/datasets/decoder.py): a window of
    ``clip_size = sampling_rate * num_frames / target_fps * fps`` frames placed by
    ``get_start_end_idx(n, clip_size, view, num_views)`` (start ``max(n - clip_size, 0) * view
    / num_views``, end ``start + clip_size - 1``), then ``temporal_sampling``: ``T`` points of
    ``torch.linspace(start, end, T)`` (float32), clamped to ``[0, n - 1]``, truncated by
    ``.long()``. Defaults: DATA.SAMPLING_RATE 32 and DATA.TARGET_FPS 30 of
    configs/Kinetics/TimeSformer_divST_8x32_224.yaml (8 frames over 8.53 s)."""
    clip_size = sampling_rate * num_frames / target_fps * fps
    delta = max(num_available - clip_size, 0)
    start = delta * view / num_views
    end = start + clip_size - 1
    index = torch.linspace(start, end, num_frames)
    return torch.clamp(index, 0, num_available - 1).long().tolist()


@register_sampling("timesformer_pyav")
def timesformer_pyav(num_available, num_frames, *, fps, view=0, num_views=1, timing=None,
                     sampling_rate=32, target_fps=30):
    """TimeSformer's PyAV decoding exactly (timesformer/datasets/decoder.py, ``pyav_decode`` then
    ``decode``): the window is placed on the stream's *declared* frame count and duration:
    ``get_start_end_idx(stream.frames, clip_size, view, num_views)``, converted to timestamps
    with ``duration / stream.frames`` per frame (``int`` of each end); the frames shown in
    ``[start_pts, end_pts]`` plus the next one (``pyav_decode_stream``, buffer_size 0) are
    the decoded set, of which ``temporal_sampling`` takes ``linspace(0, clip_size - 1, T)``,
    clamped to its length. mp4s cut with an edit list declare their pre-roll frames too, so on
    them the window is shorter than clip_size frames. Where the reference decodes the whole
    clip (no declared duration) or fails (no declared frame count: a division by zero; no
    timestamps; an empty window), this is "timesformer_window" over the counted frames."""
    if (timing is None or timing.duration is None or timing.declared_frames <= 0
            or len(timing.frame_pts) != num_available):
        return timesformer_window(num_available, num_frames, fps=fps, view=view, num_views=num_views,
                                  sampling_rate=sampling_rate, target_fps=target_fps)
    clip_size = sampling_rate * num_frames / target_fps * fps
    start = max(timing.declared_frames - clip_size, 0) * view / num_views
    end = start + clip_size - 1
    per_frame = timing.duration / timing.declared_frames
    start_pts, end_pts = int(start * per_frame), int(end * per_frame)
    window = [i for i, pts in enumerate(timing.frame_pts) if start_pts <= pts <= end_pts]
    after = [i for i, pts in enumerate(timing.frame_pts) if pts > end_pts][:1]
    window += after
    if not window:
        return timesformer_window(num_available, num_frames, fps=fps, view=view, num_views=num_views,
                                  sampling_rate=sampling_rate, target_fps=target_fps)
    index = torch.clamp(torch.linspace(0, clip_size - 1, num_frames), 0, len(window) - 1).long()
    return [window[i] for i in index.tolist()]


class DividedSpaceTimeBlock(nn.Module):
    """Temporal attention (each patch across frames), then spatial attention (each frame), then MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = _norm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.temporal_norm1 = _norm(dim)
        self.temporal_attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm2 = _norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        B, _, D = x.shape
        T = num_frames
        cls, patches = x[:, :1], x[:, 1:]
        N = patches.shape[1] // T

        # Temporal: each spatial position attends over the T frames.
        xt = patches.reshape(B * N, T, D)
        xt = self.temporal_fc(self.temporal_attn(self.temporal_norm1(xt)).reshape(B, N * T, D))
        patches = patches + xt

        # Spatial: each frame attends over its N patches plus its own copy of the CLS token.
        xs = patches.reshape(B, N, T, D).transpose(1, 2).reshape(B * T, N, D)
        xs = torch.cat((cls.repeat_interleave(T, dim=0), xs), dim=1)
        res = self.attn(self.norm1(xs))
        res_cls = res[:, :1].reshape(B, T, D).mean(dim=1, keepdim=True)  # the frames' CLS updates, averaged
        res_patches = res[:, 1:].reshape(B, T, N, D).transpose(1, 2).reshape(B, N * T, D)

        x = torch.cat((cls, patches), dim=1) + torch.cat((res_cls, res_patches), dim=1)
        return x + self.mlp(self.norm2(x))


class TimeSformer(nn.Module):
    def __init__(self, img_size: int = 224, patch_size: int = 16, num_frames: int = 8,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 attention_type: str = "divided_space_time"):
        super().__init__()
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {', '.join(ATTENTION_TYPES)}, got {attention_type!r}")
        self.attention_type = attention_type
        self.num_frames = num_frames
        self.img_size = img_size
        self.embed_dim = self.num_features = embed_dim
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=3, embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        if attention_type != "space_only":
            self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        if attention_type == "divided_space_time":
            self.blocks = nn.ModuleList(DividedSpaceTimeBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        else:
            self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=_norm)
                                        for _ in range(depth))
        self.norm = _norm(embed_dim)
        self._init_weights()

    def _init_weights(self):
        # As the reference: truncated normal for embeddings and linears; temporal_fc of every block
        # but the first starts at zero, so an untrained model begins as a per-frame ViT.
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.attention_type == "divided_space_time":
            for blk in list(self.blocks)[1:]:
                nn.init.zeros_(blk.temporal_fc.weight)
                nn.init.zeros_(blk.temporal_fc.bias)

    def forward_features(self, video: torch.Tensor, layers: Sequence[int] = ()):
        """(B, 3, T, H, W) normalized frames -> final-norm tokens (B, 1 + N*T, D); (B, 1 + N, D) for space_only.

        With ``layers`` (block indices), also returns {i: the final-norm CLS token after block i}.
        """
        self._check_input(video)
        B, _, T = video.shape[:3]
        frames = video.transpose(1, 2).flatten(0, 1)            # (B*T, 3, H, W)
        x = self.patch_embed(frames)                            # (B*T, N, D)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        cls_after = {}

        if self.attention_type == "space_only":
            for i, blk in enumerate(self.blocks):
                x = blk(x)
                if i in layers:   # the clip's CLS is the frames' CLS averaged, as at the end
                    cls_after[i] = self.norm(x[:, 0].reshape(B, T, -1).mean(dim=1))
            self._frame_tokens = x.reshape(B, T, *x.shape[1:])   # for tokens(): per-frame patches
            x = self._frame_tokens.mean(dim=1)                   # average the frames' tokens
            out = self.norm(x)
            return (out, cls_after) if layers else out

        cls = x[::T, :1]                                       # the CLS token of each clip's first frame
        N, D = x.shape[1] - 1, x.shape[2]
        patches = x[:, 1:].reshape(B, T, N, D).transpose(1, 2) + self.time_embed.unsqueeze(1)  # (B, N, T, D)
        x = torch.cat((cls, patches.reshape(B, N * T, D)), dim=1)
        for i, blk in enumerate(self.blocks):
            x = blk(x, T) if self.attention_type == "divided_space_time" else blk(x)
            if i in layers:
                cls_after[i] = self.norm(x[:, 0])
        out = self.norm(x)
        return (out, cls_after) if layers else out

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, D): the final-norm CLS token, the input of the dropped classifier."""
        return self.forward_features(video)[:, 0]

    # -- what extraction asks of a backbone (see extract/registry.py) --------------------------

    def input_specs(self, modality: str = "video", spatial_crops: int = 1) -> dict:
        """TimeSformer's test view (timesformer/datasets/kinetics.py, test mode): with one crop the
        short side is scaled to DATA.TRAIN_JITTER_SCALES[0] and the centre TEST_CROP_SIZE square
        taken; with three crops the short side is scaled to TEST_CROP_SIZE and the left, centre
        and right squares taken. TRAIN_JITTER_SCALES[0] is 256 at 224 and 512 at 448
        (configs/Kinetics/TimeSformer_divST_*): 8/7 of the crop, used at any size."""
        resize = round(self.img_size * 8 / 7) if spatial_crops == 1 else None
        return {"video": VideoConfig(**PREPROCESSING, num_frames=self.num_frames, img_size=self.img_size,
                                     resize=resize, spatial_crops=spatial_crops, yuv_matrix=YUV_MATRIX)}

    def embedding_shapes(self, modality: str = "video", extras: Extras = Extras()) -> dict:
        D, depth = self.embed_dim, len(self.blocks)
        shapes = {"video": (D,)}
        if extras.tokens:
            shapes["video_tokens"] = (self.num_frames + 1, D)
        if extras.layers is not None:
            shapes["video_layers"] = (len(extras.layer_indices(depth)), D)
        return shapes

    def extract(self, modality: str, inputs: dict, extras: Extras = Extras()) -> dict:
        """{"video": (B, 3, T, H, W)} -> {"video": (B, D)} and, when asked, ``video_tokens``: the
        CLS token then each frame's mean over its spatial patches (T + 1, D), and ``video_layers``:
        the final-norm CLS after each chosen block (L, D)."""
        video = inputs["video"]
        layers = extras.layer_indices(len(self.blocks)) if extras.layers is not None else ()
        tokens, cls_after = self.forward_features(video, layers) if layers else (self.forward_features(video), {})
        out = {"video": tokens[:, 0]}
        if extras.tokens:
            out["video_tokens"] = torch.cat((tokens[:, :1], self._frame_means(tokens)), dim=1)
        if layers:
            out["video_layers"] = torch.stack([cls_after[i] for i in layers], dim=1)
        return out

    def _frame_means(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each frame's final-norm patch tokens averaged over space: (B, T, D)."""
        B, T, D = tokens.shape[0], self.num_frames, tokens.shape[-1]
        if self.attention_type == "space_only":
            return self.norm(self._frame_tokens[:, :, 1:]).mean(dim=2)
        return tokens[:, 1:].reshape(B, -1, T, D).mean(dim=1)   # patch-major, frame-minor

    def _check_input(self, video: torch.Tensor) -> None:
        want = (3, self.num_frames, self.img_size, self.img_size)
        if video.ndim != 5 or tuple(video.shape[1:]) != want:
            raise ValueError(f"TimeSformer expects video of shape (B, {', '.join(map(str, want))}), "
                             f"got {tuple(video.shape)}")


# Hugging Face's TimeSformer (transformers models/timesformer, a port of the same network, as its
# snapshots store the keys, e.g. facebook/timesformer-base-finetuned-k400) -> the reference names.
HF_PREFIX = "timesformer."
HF_NAMES = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
            "embeddings.time_embeddings": "time_embed",
            "embeddings.patch_embeddings.projection.": "patch_embed.proj.", "layernorm.": "norm."}
HF_BLOCK = {"attention.attention.qkv.": "attn.qkv.", "attention.output.dense.": "attn.proj.",
            "temporal_attention.attention.qkv.": "temporal_attn.qkv.",
            "temporal_attention.output.dense.": "temporal_attn.proj.", "temporal_dense.": "temporal_fc.",
            "temporal_layernorm.": "temporal_norm1.", "layernorm_before.": "norm1.", "layernorm_after.": "norm2.",
            "intermediate.dense.": "mlp.fc1.", "output.dense.": "mlp.fc2."}


def from_hf_names(state_dict: dict) -> dict:
    """An HF TimeSformer state dict (TimesformerModel or ...ForVideoClassification) in the
    reference's names; its ``classifier`` stays under that name (dropped by the filter)."""
    out = {}
    for key, value in state_dict.items():
        name = key[len(HF_PREFIX):] if key.startswith(HF_PREFIX) else key
        table, rest, head = HF_NAMES, name, ""
        if name.startswith("encoder.layer."):
            index, rest = name[len("encoder.layer."):].split(".", 1)
            table, head = HF_BLOCK, f"blocks.{index}."
        # longest match first: "attention.output.dense." before "output.dense."
        prefix = next((p for p in sorted(table, key=len, reverse=True)
                       if rest == p or (p.endswith(".") and rest.startswith(p))), None)
        out[head + (table[prefix] + rest[len(prefix):] if prefix else rest)] = value
    return out


def checkpoint_filter_fn(state_dict: dict, model: TimeSformer) -> dict:
    """Adapt a published TimeSformer state dict to ``model``.

    A Hugging Face snapshot's keys are renamed first (:func:`from_hf_names`), its classifier dropped.

    Removes the SlowFast ``model.`` (and DataParallel ``module.``) prefixes and the classifier, and
    resizes positional and time embeddings as the reference forward does when the input differs
    from training: 2-D nearest interpolation of the patch grid, 1-D nearest over frames (this is
    how the 64-frame HowTo100M model runs on 8 frames). The reference's ``load_pretrained`` resizes
    the flattened patch sequence instead; we follow its forward, which is what the published
    inference numbers use.
    """
    if any(k.startswith(HF_PREFIX + "embeddings.") for k in state_dict):
        state_dict = drop_keys(from_hf_names(state_dict), ("classifier.",), "TimeSformer snapshot")
    sd = strip_prefixes(state_dict, ("module.", "model."))
    sd = drop_keys(sd, ("head.",), "TimeSformer checkpoint")
    if "pos_embed" in sd and sd["pos_embed"].shape[1] != model.pos_embed.shape[1]:
        sd["pos_embed"] = _resize_pos_embed(sd["pos_embed"], model.patch_embed.grid_size)
    if "time_embed" in sd and hasattr(model, "time_embed") and sd["time_embed"].shape[1] != model.num_frames:
        sd["time_embed"] = F.interpolate(sd["time_embed"].transpose(1, 2), size=model.num_frames,
                                         mode="nearest").transpose(1, 2)
    return sd


def _resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    side = int(round(patch_pos.shape[1] ** 0.5))
    if side * side != patch_pos.shape[1]:
        return pos_embed  # not a square grid: leave it, strict loading will name the shape mismatch
    patch_pos = patch_pos.transpose(1, 2).reshape(1, -1, side, side)
    patch_pos = F.interpolate(patch_pos, size=grid, mode="nearest").flatten(2).transpose(1, 2)
    return torch.cat((cls_pos, patch_pos), dim=1)


def detect_attention_type(state_dict: dict) -> str | None:
    """Which TimeSformer variant a (filtered) state dict holds, or None if it is no ViT at all."""
    if not any(k.startswith("blocks.0.") for k in state_dict):
        return None
    if any(".temporal_attn." in k for k in state_dict):
        return "divided_space_time"
    return "joint_space_time" if "time_embed" in state_dict else "space_only"


@register_backbone("timesformer", modality="video",
                   help="TimeSformer (facebookresearch/TimeSformer): final-norm CLS token, 768-d")
def load_timesformer(checkpoint=None, num_frames: int = 8, img_size: int = 224,
                     attention_type: str = "divided_space_time", arch: str = "base",
                     seed: int = 0) -> TimeSformer:
    """A frozen, eval-mode TimeSformer whose ``forward(video)`` maps (B, 3, T, H, W) to (B, 768).

    ``checkpoint``: a published ``.pyth`` (e.g. ``TimeSformer_divST_8x32_224_K400.pyth`` or the
    64-frame ``TimeSformer_divST_64x32_224_HowTo100M.pyth``), or a plain state dict file. ``None``
    gives random weights from ``seed`` (with a warning). ``arch="tiny"`` is a 64-wide, 2-deep model
    for tests and CPU demos.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if attention_type not in ATTENTION_TYPES:
        raise ValueError(f"attention_type must be one of {', '.join(ATTENTION_TYPES)}, got {attention_type!r}")
    if num_frames < 1 or img_size < 16 or img_size % 16:
        raise ValueError(f"need num_frames >= 1 and img_size a multiple of 16, got {num_frames}, {img_size}")
    config = dict(model="timesformer", arch=arch, num_frames=num_frames, img_size=img_size,
                  attention_type=attention_type, **ARCHS[arch])
    if checkpoint is not None and Path(checkpoint).is_dir():
        _check_hf_config(Path(checkpoint), attention_type, ARCHS[arch])
    return build_backbone(
        lambda: TimeSformer(img_size=img_size, num_frames=num_frames, attention_type=attention_type, **ARCHS[arch]),
        f"TimeSformer ({arch})", config, checkpoint, seed, checkpoint_filter_fn,
        hint_fn=lambda sd: _type_hint(sd, attention_type),
    )


def _check_hf_config(folder: Path, attention_type: str, arch: dict) -> None:
    """An HF TimeSformer snapshot's config.json must describe the network load_timesformer builds
    (frame count and image size may differ: the embeddings are resized as for any checkpoint)."""
    import json

    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json in this snapshot folder")
    config = json.loads(path.read_text(encoding="utf-8"))
    want = {"model_type": "timesformer", "attention_type": attention_type, "hidden_size": arch["embed_dim"],
            "num_hidden_layers": arch["depth"], "num_attention_heads": arch["num_heads"],
            "intermediate_size": 4 * arch["embed_dim"], "hidden_act": "gelu", "patch_size": 16,
            "num_channels": 3, "qkv_bias": True, "layer_norm_eps": 1e-6}
    wrong = [f"{k} {config.get(k)!r} (load_timesformer builds {v!r})" for k, v in want.items()
             if config.get(k, v) != v]
    if wrong:
        raise CheckpointError(f"{path}: not the TimeSformer load_timesformer builds: {'; '.join(wrong)}")


def _type_hint(state_dict: dict, attention_type: str) -> str:
    found = detect_attention_type(state_dict)
    if found is None or found == attention_type:
        return ""
    return f" (it looks like a {found} TimeSformer: pass attention_type={found!r})"
