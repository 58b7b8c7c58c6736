"""AST, the Audio Spectrogram Transformer (Gong et al., 2021), the frozen audio backbone.

A DeiT-base-distilled ViT over a log-mel spectrogram: a 1-channel 16x16 convolutional patch
embedding with overlapping strides (fstride, tstride; 10 and 10 for the AudioSet checkpoint),
CLS and distillation tokens, timm's ``Block`` for the encoder. Parameter names are those of
YuanGongND/ast's ``ASTModel.v`` so that ``audioset_10_10_0.4593.pth`` loads key for key once
:func:`checkpoint_filter_fn` has removed the ``module.v.`` prefixes and the classifiers.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from alphafuse.data import AudioConfig

from .checkpoint import CheckpointError, build_backbone, drop_keys, strip_prefixes
from .registry import Extras, register_backbone

__all__ = ["AudioSpectrogramTransformer", "load_ast"]

ARCHS = {
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "tiny": dict(embed_dim=64, depth=2, num_heads=2),
}
NUM_MEL_BINS = 128
PATCH = 16

_norm = partial(nn.LayerNorm, eps=1e-6)

# AST's AudioSet input, declared beside the model (YuanGongND/ast src/dataloader.py _wav2fbank
# and __getitem__, with the AudioSet statistics of egs/audioset/run.sh): Kaldi fbank of the
# 16 kHz mono wav, (x - mean) / (2 * std). The length is the model's input_tdim.
PREPROCESSING = dict(norm_mean=-4.2677393, norm_std=4.5689974)


def patch_grid(input_fdim: int, input_tdim: int, fstride: int, tstride: int) -> tuple[int, int]:
    """Number of patches along frequency and time for a 16x16 kernel with these strides."""
    return (input_fdim - PATCH) // fstride + 1, (input_tdim - PATCH) // tstride + 1


class SpectrogramPatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, fstride: int, tstride: int):
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=PATCH, stride=(fstride, tstride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, F, T) -> (B, f_dim * t_dim, D)
        return self.proj(x).flatten(2).transpose(1, 2)


class AudioSpectrogramTransformer(nn.Module):
    def __init__(self, input_tdim: int = 1024, input_fdim: int = NUM_MEL_BINS, fstride: int = 10,
                 tstride: int = 10, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.input_tdim, self.input_fdim = input_tdim, input_fdim
        self.grid = patch_grid(input_fdim, input_tdim, fstride, tstride)
        self.embed_dim = self.num_features = embed_dim
        self.patch_embed = SpectrogramPatchEmbed(embed_dim, fstride, tstride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1] + 2, embed_dim))
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=_norm)
                                      for _ in range(depth)))
        self.norm = _norm(embed_dim)
        for p in (self.pos_embed, self.cls_token, self.dist_token):
            trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, fbank: torch.Tensor, layers: Sequence[int] = ()):
        """(B, input_tdim, 128) normalized fbank -> final-norm tokens (B, 2 + f_dim * t_dim, D).

        With ``layers`` (block indices), also returns {i: final-norm mean of CLS and distillation
        tokens after block i}.
        """
        if fbank.ndim != 3 or tuple(fbank.shape[1:]) != (self.input_tdim, self.input_fdim):
            raise ValueError(f"AST expects fbank of shape (B, {self.input_tdim}, {self.input_fdim}), "
                             f"got {tuple(fbank.shape)}")
        x = self.patch_embed(fbank.transpose(1, 2).unsqueeze(1))  # frequency as height, time as width
        B = x.shape[0]
        x = torch.cat((self.cls_token.expand(B, -1, -1), self.dist_token.expand(B, -1, -1), x), dim=1)
        x = x + self.pos_embed
        pooled_after = {}
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in layers:
                normed = self.norm(x[:, :2])
                pooled_after[i] = (normed[:, 0] + normed[:, 1]) / 2
        out = self.norm(x)
        return (out, pooled_after) if layers else out

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, input_tdim, 128) -> (B, D): mean of the CLS and distillation tokens, the input of the dropped mlp_head."""
        x = self.forward_features(fbank)
        return (x[:, 0] + x[:, 1]) / 2

    # -- what extraction asks of a backbone (see extract/registry.py) --------------------------

    def input_specs(self, modality: str = "audio") -> dict:
        return {"audio": AudioConfig(**PREPROCESSING, target_length=self.input_tdim, num_mel_bins=self.input_fdim)}

    def embedding_shapes(self, modality: str = "audio", extras: Extras = Extras()) -> dict:
        D = self.embed_dim
        shapes = {"audio": (D,)}
        if extras.tokens:
            shapes["audio_tokens"] = (2 + self.grid[1], D)
        if extras.layers is not None:
            shapes["audio_layers"] = (len(extras.layer_indices(len(self.blocks))), D)
        return shapes

    def extract(self, modality: str, inputs: dict, extras: Extras = Extras()) -> dict:
        """{"audio": fbank (B, T, 128)} -> {"audio": (B, D)} and, when asked, ``audio_tokens``: CLS,
        distillation, then each time step's patch tokens averaged over the frequency rows
        (2 + t_dim, D), and ``audio_layers`` (L, D)."""
        fbank = inputs["audio"]
        layers = extras.layer_indices(len(self.blocks)) if extras.layers is not None else ()
        tokens, pooled_after = self.forward_features(fbank, layers) if layers else (self.forward_features(fbank), {})
        out = {"audio": (tokens[:, 0] + tokens[:, 1]) / 2}
        if extras.tokens:
            f_dim, t_dim = self.grid
            grid = tokens[:, 2:].reshape(tokens.shape[0], f_dim, t_dim, -1)   # patches are frequency-major
            out["audio_tokens"] = torch.cat((tokens[:, :2], grid.mean(dim=1)), dim=1)
        if layers:
            out["audio_layers"] = torch.stack([pooled_after[i] for i in layers], dim=1)
        return out


# Hugging Face's AST (transformers models/audio_spectrogram_transformer, as its snapshots store the
# keys, e.g. MIT/ast-finetuned-audioset-10-10-0.4593) -> YuanGongND/ast's ASTModel.v names.
HF_PREFIX = "audio_spectrogram_transformer."
HF_NAMES = {"embeddings.cls_token": "cls_token", "embeddings.distillation_token": "dist_token",
            "embeddings.position_embeddings": "pos_embed",
            "embeddings.patch_embeddings.projection.": "patch_embed.proj.", "layernorm.": "norm."}
HF_BLOCK = {"attention.output.dense.": "attn.proj.", "intermediate.dense.": "mlp.fc1.",
            "output.dense.": "mlp.fc2.", "layernorm_before.": "norm1.", "layernorm_after.": "norm2."}


def from_hf_names(state_dict: dict) -> dict:
    """An HF AST state dict (ASTModel or ASTForAudioClassification) in this module's names: query,
    key and value concatenated into timm's ``qkv``; the classifier left under ``classifier.``."""
    out, qkv = {}, {}
    for key, value in state_dict.items():
        name = key[len(HF_PREFIX):] if key.startswith(HF_PREFIX) else key
        if name.startswith("encoder.layer."):
            index, rest = name[len("encoder.layer."):].split(".", 1)
            if rest.startswith("attention.attention."):
                part, kind = rest[len("attention.attention."):].split(".")
                qkv.setdefault((index, kind), {})[part] = value
                continue
            prefix = next((p for p in HF_BLOCK if rest.startswith(p)), None)
            out[f"blocks.{index}." + (HF_BLOCK[prefix] + rest[len(prefix):] if prefix else rest)] = value
            continue
        prefix = next((p for p in HF_NAMES if name == p or (p.endswith(".") and name.startswith(p))), None)
        out[HF_NAMES[prefix] + name[len(prefix):] if prefix else name] = value
    for (index, kind), parts in qkv.items():
        lacking = sorted({"query", "key", "value"} - set(parts))
        if lacking:
            raise CheckpointError(f"AST snapshot lacks {HF_PREFIX}encoder.layer.{index}.attention.attention."
                                  f"{lacking[0]}.{kind}")
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def checkpoint_filter_fn(state_dict: dict, model: AudioSpectrogramTransformer) -> dict:
    """Adapt a published AST state dict to ``model``.

    Removes DataParallel's ``module.`` and ASTModel's ``v.`` prefixes and the classifiers (AST's
    ``mlp_head``, DeiT's ``head`` and ``head_dist``). A Hugging Face snapshot's keys are renamed
    first (:func:`from_hf_names`; its ``classifier`` dropped likewise). When ``input_tdim`` differs from training,
    the time axis of the positional grid is resized as the reference does: cut from the middle
    when shorter, bilinear interpolation when longer (the frequency axis likewise).
    """
    if any(k.startswith(HF_PREFIX + "embeddings.") for k in state_dict):
        state_dict = drop_keys(from_hf_names(state_dict), ("classifier.",), "AST snapshot")
    sd = strip_prefixes(state_dict, ("module.", "v."))
    sd = drop_keys(sd, ("mlp_head.", "head.", "head_dist."), "AST checkpoint")
    pos = sd.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape[1] != model.pos_embed.shape[1]:
        sd["pos_embed"] = _resize_pos_embed(pos, model.grid)
    return sd


def _check_hf_config(folder: Path, fstride: int, tstride: int, arch: dict) -> float:
    """An HF AST snapshot's config.json must describe the network load_ast builds; returns its
    LayerNorm epsilon, the one way the two networks differ."""
    import json

    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json in this snapshot folder")
    config = json.loads(path.read_text(encoding="utf-8"))
    want = {"model_type": "audio-spectrogram-transformer", "frequency_stride": fstride, "time_stride": tstride,
            "num_mel_bins": NUM_MEL_BINS, "hidden_size": arch["embed_dim"], "num_hidden_layers": arch["depth"],
            "num_attention_heads": arch["num_heads"], "intermediate_size": 4 * arch["embed_dim"],
            "hidden_act": "gelu", "patch_size": PATCH}
    wrong = [f"{k} {config.get(k)!r} (load_ast builds {v!r})" for k, v in want.items() if config.get(k, v) != v]
    if wrong:
        raise CheckpointError(f"{path}: not the AST load_ast builds: {'; '.join(wrong)}")
    return float(config.get("layer_norm_eps", 1e-12))


def _resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    f_dim, t_dim = grid
    tokens, patches = pos_embed[:, :2], pos_embed[:, 2:]
    if patches.shape[1] % f_dim:
        return pos_embed  # another frequency layout: strict loading will name the shape mismatch
    f_ckpt, t_ckpt = f_dim, patches.shape[1] // f_dim
    D = patches.shape[2]
    grid_embed = patches.transpose(1, 2).reshape(1, D, f_ckpt, t_ckpt)
    if t_dim < t_ckpt:
        start = t_ckpt // 2 - t_dim // 2
        grid_embed = grid_embed[:, :, :, start:start + t_dim]
    elif t_dim > t_ckpt:
        grid_embed = F.interpolate(grid_embed, size=(f_ckpt, t_dim), mode="bilinear")
    return torch.cat((tokens, grid_embed.reshape(1, D, f_dim * t_dim).transpose(1, 2)), dim=1)


@register_backbone("ast", modality="audio",
                   help="AST (YuanGongND/ast): mean of final-norm CLS and distillation tokens, 768-d")
def load_ast(checkpoint=None, input_tdim: int = 1024, fstride: int = 10, tstride: int = 10,
             arch: str = "base", seed: int = 0) -> AudioSpectrogramTransformer:
    """A frozen, eval-mode AST whose ``forward(fbank)`` maps (B, input_tdim, 128) to (B, 768).

    ``checkpoint``: the published ``audioset_10_10_0.4593.pth`` (a DataParallel state dict), a
    plain state dict file, or a Hugging Face AST snapshot folder (its config must describe this
    network: strides, mel bins, width, depth, heads, GELU; its LayerNorm epsilon, 1e-12 in HF's
    snapshots where the reference has 1e-6, is taken from the config and recorded). ``None`` gives random weights from ``seed`` (with a warning).
    ``arch="tiny"`` is a 64-wide, 2-deep model for tests and CPU demos.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if input_tdim < PATCH or fstride < 1 or tstride < 1:
        raise ValueError(f"need input_tdim >= {PATCH} and positive strides, got {input_tdim}, {fstride}, {tstride}")
    config = dict(model="ast", arch=arch, input_tdim=input_tdim, input_fdim=NUM_MEL_BINS,
                  fstride=fstride, tstride=tstride, **ARCHS[arch])
    eps = None
    if checkpoint is not None and Path(checkpoint).is_dir():
        eps = config["layer_norm_eps"] = _check_hf_config(Path(checkpoint), fstride, tstride, ARCHS[arch])

    def make():
        model = AudioSpectrogramTransformer(input_tdim=input_tdim, fstride=fstride, tstride=tstride, **ARCHS[arch])
        for m in model.modules():   # an HF snapshot's LayerNorm epsilon (1e-12, the reference's is 1e-6)
            if eps is not None and isinstance(m, nn.LayerNorm):
                m.eps = eps
        return model

    return build_backbone(make, f"AST ({arch})", config, checkpoint, seed, checkpoint_filter_fn)
