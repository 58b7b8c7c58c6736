"""The alpha-transformer end to end: frozen backbones, then any trained fusion head.

Training never needs this module (it runs on cached embeddings); it exists to use a trained
head on new videos, and to prove that the cached path and the whole model agree.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from data import AudioConfig, ClipError, VideoConfig, load_clip
from extract.backbones import rebuild_backbone
from extract.runner import embed_video

from .heads import Head, modality_of
from .inputs import HeadInputs, head_logits
from .run import load_run


class AlphaTransformer(nn.Module):
    """``forward(video, fbank) -> logits``: the backbones' embeddings through the fusion head.

    The backbones are asked for exactly the embeddings the head reads (``head.input_names()``:
    pooled ``video``/``audio``, or ``*_tokens``, ``*_layers``) through ``backbone.embed(**inputs)``
    (see extract/registry.py), which returns ``{name: (B, ...)}``; an ``embed`` that takes a
    ``names`` argument is told which. Backbones without ``embed`` give their pooled embedding
    (TimeSformer: the mean over views, as extraction cached it). Embeddings that the training
    cache recorded with views (``embedding_info``) are scored by the evaluation rule: the mean
    of the per-view softmax (fuse/inputs.py), so the end-to-end model is the cached path.
    """

    def __init__(self, video_backbone: nn.Module, audio_backbone: nn.Module, head: Head,
                 label_names: list[str] | None = None, preprocessing: dict | None = None,
                 embedding_info: dict | None = None):
        super().__init__()
        self.video_backbone, self.audio_backbone, self.head = video_backbone, audio_backbone, head
        self.label_names = list(label_names or [])
        self.preprocessing = preprocessing or {}
        self.embedding_info = dict(embedding_info or {})

    def embed(self, video: torch.Tensor | None = None, fbank: torch.Tensor | None = None, **inputs) -> dict:
        """The embeddings the head reads, by name, from the backbones' inputs (video (B, 3, T, H, W)
        or (B, views, 3, T, H, W); fbank (B, input_tdim, 128); other named inputs as given)."""
        inputs = {k: v for k, v in {"video": video, "fbank": fbank, **inputs}.items() if v is not None}
        wanted = self.head.input_names()
        out: dict[str, torch.Tensor] = {}
        backbones = [("video", self.video_backbone)]
        if self.audio_backbone is not self.video_backbone:
            backbones.append(("audio", self.audio_backbone))
        for modality, backbone in backbones:
            names = [n for n in wanted if modality_of(n) == modality or backbone is self.audio_backbone is
                     self.video_backbone]
            if names:
                out.update(_embed(backbone, modality, inputs, names, self.head.name))
        return out

    def forward(self, video: torch.Tensor | None = None, fbank: torch.Tensor | None = None, **inputs) -> torch.Tensor:
        embeddings = self.embed(video, fbank, **inputs)
        views = {n: info["views"] for n, info in self.embedding_info.items()
                 if n in embeddings and (info or {}).get("views")}
        data = HeadInputs.from_tensors(embeddings, views=views)
        return head_logits(self.head, data, torch.arange(len(data), device=data.device))

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
        model = cls(video, audio, head, meta["label_names"], meta["preprocessing"], meta.get("embedding_info"))
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


def _embed(backbone: nn.Module, modality: str, inputs: dict, names: list[str], head: str) -> dict:
    """``names`` from one backbone: its ``embed(**inputs)``, or, for a backbone without one, its pooled output."""
    if hasattr(backbone, "embed"):
        params = inspect.signature(backbone.embed).parameters
        accepted = list(backbone.input_specs(modality)) if hasattr(backbone, "input_specs") else list(params)
        kwargs = {k: inputs[k] for k in accepted if k in inputs}
        if "names" in params:
            kwargs["names"] = names
        got = backbone.embed(**kwargs)
    elif modality == "video":
        got = {"video": embed_video(backbone, inputs["video"])}
    else:
        got = {"audio": backbone(inputs["fbank"])}
    missing = [n for n in names if n not in got]
    if missing:
        raise ValueError(f"the {modality} backbone gives {', '.join(got) or 'nothing'}, not {', '.join(missing)}, "
                         f"which the {head} head reads; rebuild it with a backbone that gives them")
    return {n: got[n] for n in names}


def _tuples(config: dict) -> dict:
    # JSON turned the config's tuples (mean, std) into lists; the dataclass wants them hashable.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}

