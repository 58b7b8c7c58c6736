"""The alpha-transformer end to end: frozen backbones, the transform and the trained head.

Training never needs this module (it runs on cached embeddings); it exists to use a trained
head on new videos, and to prove that the cached path and the whole model agree.
"""
from __future__ import annotations

import torch
from torch import nn

from data import AudioConfig, ClipError, VideoConfig, load_clip
from extract.backbones import rebuild_backbone
from extract.runner import embed_video

from .head import AlphaFuseHead
from .run import load_run


class AlphaTransformer(nn.Module):
    """``forward(video, fbank) -> logits``: TimeSformer and AST embeddings through the fusion head."""

    def __init__(self, video_backbone: nn.Module, audio_backbone: nn.Module, head: AlphaFuseHead,
                 label_names: list[str] | None = None, preprocessing: dict | None = None):
        super().__init__()
        self.video_backbone, self.audio_backbone, self.head = video_backbone, audio_backbone, head
        self.label_names = list(label_names or [])
        self.preprocessing = preprocessing or {}

    def forward(self, video: torch.Tensor, fbank: torch.Tensor) -> torch.Tensor:
        """video (B, 3, T, H, W) or (B, views, 3, T, H, W); fbank (B, input_tdim, 128)."""
        return self.head(embed_video(self.video_backbone, video), self.audio_backbone(fbank))

    @classmethod
    def from_run(cls, run_dir, video_checkpoint=None, audio_checkpoint=None, which: str = "best",
                 device: str = "cpu") -> "AlphaTransformer":
        """Rebuild the whole model from a run directory written by ``fuse_run``.

        The backbones come from what the cache recorded: random ones from their seed, pretrained
        ones from their checkpoint (where extraction read it, unless given here), whose sha256
        must match the cache's fingerprint.
        """
        head, meta = load_run(run_dir, which)
        sources = meta.get("sources") or {}
        video = rebuild_backbone(meta["backbones"]["video"], video_checkpoint or sources.get("video"))
        audio = rebuild_backbone(meta["backbones"]["audio"], audio_checkpoint or sources.get("audio"))
        model = cls(video, audio, head, meta["label_names"], meta["preprocessing"])
        return model.to(device).eval()

    def video_config(self) -> VideoConfig:
        return VideoConfig(**_tuples(self.preprocessing["video"]))

    def audio_config(self) -> AudioConfig:
        return AudioConfig(**self.preprocessing["audio"])

    @torch.inference_mode()
    def predict_files(self, paths, top_k: int = 5) -> list[dict]:
        """Decode each file as extraction did and return its top-k labels with probabilities.

        A file that cannot be read gives ``{"path", "error"}`` instead of stopping the others.
        """
        device = next(self.head.parameters()).device
        video_cfg, audio_cfg = self.video_config(), self.audio_config()
        results = []
        for path in paths:
            try:
                clip = load_clip(path, video_cfg, audio_cfg)
            except ClipError as exc:
                results.append({"path": str(path), "error": exc.reason})
                continue
            has_audio = clip.has_audio
            probs = torch.softmax(self(clip.video[None].to(device), clip.fbank[None].to(device)), dim=1)[0].cpu()
            top = probs.topk(min(top_k, len(probs)))
            results.append({"path": str(path), "has_audio": has_audio,
                            "top": [{"label": self.label_names[i], "probability": float(p)}
                                    for p, i in zip(top.values.tolist(), top.indices.tolist())]})
        return results


def _tuples(config: dict) -> dict:
    # JSON turned the config's tuples (mean, std) into lists; the dataclass wants them hashable.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}

