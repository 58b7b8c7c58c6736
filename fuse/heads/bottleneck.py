"""``bottleneck``: MBT-style attention fusion over the cached tokens.

Nagrani et al. 2021, "Attention Bottlenecks for Multimodal Fusion"; reference implementation
google-research/scenic, scenic/projects/mbt/model.py (``MBT``, ``Encoder``, ``EncoderBlock``),
here on top of frozen backbones' cached tokens instead of raw patches:

1. each modality's tokens (``video_tokens`` (N, Tv, Dv), ``audio_tokens`` (N, Ta, Da)) are
   projected to ``dim``; a CLS token (zeros) is prepended and a learned position embedding
   (normal, std 0.02) added (``MBT.__call__`` with ``classifier='token'``,
   ``add_positional_embed``);
2. ``layers`` fusion layers (MBT with ``fusion_layer=0``, ``use_bottleneck=True``): in each,
   every modality runs its own transformer block on ``[its tokens; the B bottleneck tokens]``,
   and the bottleneck becomes the mean over modalities of their updated bottleneck tokens
   (``Encoder.__call__``); the bottleneck starts from a learned (1, B, dim) parameter
   (normal, std 0.02);
3. a shared LayerNorm (``encoder_norm``), each modality's CLS token through one shared linear
   classifier (``output_projection``, zero-initialised), and the logits averaged over
   modalities. As in MBT's ``loss_function``, training minimises the mean of the
   per-modality cross-entropies, and evaluation uses the averaged logits.

The blocks are timm's ViT ``Block``: pre-LayerNorm, multi-head self-attention with attention
and projection dropout, MLP (ratio 4) with GELU and dropout, which is MBT's ``EncoderBlock``;
LayerNorm eps 1e-6 and the tanh GELU as flax's defaults, xavier-uniform kernels, MLP biases
normal(1e-6) and attention biases zero as MBT initialises them. Differences: the inputs are
cached tokens projected by a linear layer (MBT embeds raw patches and starts from ViT
weights); MBT adds one more bottleneck token than ``n_bottlenecks`` when it classifies with
CLS tokens, this head uses exactly ``bottlenecks``; no stochastic depth, no mixup.
"""
from __future__ import annotations

import numbers
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import register_head
from .base import Head

MODALITIES = ("video", "audio")


@register_head("bottleneck", help="MBT attention bottlenecks over cached tokens (needs a cache extracted with --tokens)")
class BottleneckHead(Head):
    def __init__(self, shapes: dict, num_classes: int, dim: int = 256, layers: int = 4, bottlenecks: int = 4,
                 num_heads: int = 4, mlp_ratio: float = 4.0, block_dropout: float = 0.1,
                 modality_dropout: float = 0.0):
        from timm.models.vision_transformer import Block   # here: importing timm takes seconds

        super().__init__(modality_dropout)
        options = self.check_options(dict(dim=dim, layers=layers, bottlenecks=bottlenecks, num_heads=num_heads,
                                          mlp_ratio=mlp_ratio, block_dropout=block_dropout))
        dim, layers, bottlenecks = options["dim"], options["layers"], options["bottlenecks"]
        self.proj, self.blocks = nn.ModuleDict(), nn.ModuleDict()
        self.cls, self.pos = nn.ParameterDict(), nn.ParameterDict()
        for m in MODALITIES:
            shape = tuple(shapes[f"{m}_tokens"])
            if len(shape) != 2:
                raise ValueError(f"{m}_tokens must be (N, tokens, D) for the bottleneck head, got per-clip shape {shape}")
            self.proj[m] = nn.Linear(shape[1], dim)
            self.cls[m] = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos[m] = nn.Parameter(torch.randn(1, shape[0] + 1, dim) * 0.02)
            self.blocks[m] = nn.ModuleList(
                Block(dim, options["num_heads"], options["mlp_ratio"], qkv_bias=True, proj_drop=block_dropout,
                      attn_drop=block_dropout, act_layer=partial(nn.GELU, approximate="tanh"),
                      norm_layer=partial(nn.LayerNorm, eps=1e-6))
                for _ in range(layers))
        self.bottleneck = nn.Parameter(torch.randn(1, bottlenecks, dim) * 0.02)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.classifier = nn.Linear(dim, num_classes)
        self._init_weights()
        self._record(shapes, num_classes, **options)

    def _init_weights(self) -> None:
        for blocks in self.blocks.values():
            for block in blocks:
                for linear in (block.attn.qkv, block.attn.proj):
                    nn.init.xavier_uniform_(linear.weight)
                    nn.init.zeros_(linear.bias)
                for linear in (block.mlp.fc1, block.mlp.fc2):
                    nn.init.xavier_uniform_(linear.weight)
                    nn.init.normal_(linear.bias, std=1e-6)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    @classmethod
    def needs(cls, **_) -> tuple[str, ...]:
        return ("video_tokens", "audio_tokens")

    @classmethod
    def check_options(cls, options: dict) -> dict:
        for name in ("dim", "layers", "bottlenecks", "num_heads"):
            if name in options:
                value = options[name]
                if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1):
                    raise ValueError(f"bottleneck head: {name} must be a positive integer, got {value!r}")
                options[name] = int(value)
        dim, heads = options.get("dim", 256), options.get("num_heads", 4)
        if dim % heads:
            raise ValueError(f"bottleneck head: dim {dim} must be a multiple of num_heads {heads}")
        if "mlp_ratio" in options:
            if not (isinstance(options["mlp_ratio"], numbers.Real) and options["mlp_ratio"] > 0):
                raise ValueError(f"bottleneck head: mlp_ratio must be positive, got {options['mlp_ratio']!r}")
            options["mlp_ratio"] = float(options["mlp_ratio"])
        if "block_dropout" in options:
            p = options["block_dropout"]
            if not (isinstance(p, numbers.Real) and 0 <= p < 1):
                raise ValueError(f"bottleneck head: block_dropout must be in [0, 1), got {p!r}")
            options["block_dropout"] = float(p)
        return options

    def modality_logits(self, inputs: dict) -> dict[str, torch.Tensor]:
        """Each modality's logits from its CLS token after the fusion layers."""
        x = {}
        for m in MODALITIES:
            tokens = self.proj[m](inputs[f"{m}_tokens"])
            x[m] = torch.cat([self.cls[m].expand(len(tokens), -1, -1), tokens], dim=1) + self.pos[m]
        bottleneck = self.bottleneck.expand(len(x["video"]), -1, -1)
        for layer in range(len(self.blocks["video"])):
            updated = []
            for m in MODALITIES:
                own = x[m].shape[1]
                out = self.blocks[m][layer](torch.cat([x[m], bottleneck], dim=1))
                x[m], shared = out[:, :own], out[:, own:]
                updated.append(shared)
            bottleneck = torch.stack(updated).mean(dim=0)
        return {m: self.classifier(self.norm(x[m][:, 0])) for m in MODALITIES}

    def combine(self, inputs: dict) -> torch.Tensor:
        return torch.stack(list(self.modality_logits(inputs).values())).mean(dim=0)

    def training_loss(self, inputs: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = list(self.modality_logits(self.drop(inputs)).values())
        loss = torch.stack([F.cross_entropy(logits, labels) for logits in parts]).mean()
        return loss, torch.stack(parts).mean(dim=0).detach()
