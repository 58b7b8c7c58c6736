"""The alpha-transformer end to end: frozen backbones, then any trained fusion head.

Training never needs this module (it runs on cached embeddings); it exists to use a trained
head on new videos, and to prove that the cached path and the whole model agree. It embeds
through extraction's own code (extract.runner.embed_inputs) with the backbones, preprocessing
and extras the cache recorded, rounds what the cache stores in float16 the same way, and scores
embeddings with views by the evaluation rule (the mean of the per-view softmax, fuse/inputs.py).
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from alphafuse.data import ClipError, load_inputs
from alphafuse.data.errors import unexpected_reason
from alphafuse.extract.backbones import rebuild_backbone
from alphafuse.extract.registry import Extras, spec_from_dict
from alphafuse.extract.runner import PRECISIONS, Roles, embed_inputs

from .heads import Head
from .inputs import HeadInputs, head_logits
from .metrics import allowed_classes, mask_unseen
from .run import load_run

log = logging.getLogger(__name__)


class AlphaTransformer(nn.Module):
    """``forward(video, audio) -> logits``: the backbones' embeddings through the fusion head.

    ``roles``: {"video": backbone, "audio": backbone} or {"audiovisual": backbone}, as the cache's
    ``backbones`` recorded them; ``video`` and ``audio`` are the inputs the cache's preprocessing
    makes (frames (B, [views,] 3, T, H, W); fbank (B, T, 128) or TSAM's spectrogram image).
    """

    def __init__(self, roles: dict, head: Head, label_names: list[str] | None = None,
                 preprocessing: dict | None = None, embedding_info: dict | None = None,
                 extraction: dict | None = None, train_classes=None):
        super().__init__()
        self.backbones = nn.ModuleDict(roles)
        self.head = head
        self.label_names = list(label_names or [])
        # What predict_files may predict: the classes the head saw in training (None: all).
        self.allowed = None if train_classes is None else allowed_classes(self.label_names, train_classes)
        self.specs = {slot: spec_from_dict(slot, d) for slot, d in (preprocessing or {}).items()}
        self.embedding_info = dict(embedding_info or {})
        names = head.input_names()
        layers = (extraction or {}).get("layers")
        self.extras = Extras(tokens=any(n.endswith("_tokens") for n in names),
                             layers=(tuple(layers) if isinstance(layers, list) else layers)
                             if any(n.endswith("_layers") for n in names) else None,
                             dtype=(extraction or {}).get("dtype", "float16"))
        # The backbones run in the precision the cache was extracted in (extraction's autocast),
        # so a head trained on bf16 embeddings sees bf16 embeddings end to end too.
        self.precision = (extraction or {}).get("precision", "fp32")
        if self.precision not in PRECISIONS:
            raise ValueError(f"the cache was extracted in precision {self.precision!r}, which this version "
                             f"cannot reproduce (known: {', '.join(PRECISIONS)})")

    def embed(self, video: torch.Tensor, audio: torch.Tensor) -> dict:
        """The embeddings the head reads, as the cache holds them (float16 ones rounded likewise)."""
        dtype = PRECISIONS[self.precision]
        autocast = torch.autocast(video.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            out = embed_inputs(Roles(self.backbones.items()), {"video": video, "audio": audio}, self.extras)
        wanted = self.head.input_names()
        missing = [n for n in wanted if n not in out]
        if missing:
            raise ValueError(f"the backbones give {', '.join(out)}, not {', '.join(missing)}, which the "
                             f"{self.head.name} head reads")
        stored = torch.float16 if self.extras.dtype == "float16" else torch.float32
        return {n: out[n].to(stored).float() if n.endswith(("_tokens", "_layers")) else out[n].float()
                for n in wanted}

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        embeddings = self.embed(video, audio)
        views = {n: info["views"] for n, info in self.embedding_info.items()
                 if n in embeddings and (info or {}).get("views")}
        data = HeadInputs.from_tensors(embeddings, views=views)
        return head_logits(self.head, data, torch.arange(len(data), device=data.device))

    @classmethod
    def from_run(cls, run_dir, checkpoints: dict | None = None, which: str = "best",
                 device: str = "cpu") -> "AlphaTransformer":
        """Rebuild the whole model from a run directory written by ``fuse_run``.

        The backbones come from what the cache recorded: random ones from their seed, pretrained
        ones from their checkpoint (``checkpoints[role]``, else where extraction read it), whose
        sha256 must match the cache's fingerprint.
        """
        head, meta = load_run(run_dir, which)
        given, sources = checkpoints or {}, meta.get("sources") or {}
        roles = {role: rebuild_backbone(description, given.get(role) or sources.get(role))
                 for role, description in meta["backbones"].items()}
        model = cls(roles, head, meta["label_names"], meta["preprocessing"], meta.get("embedding_info"),
                    meta.get("extraction"), meta.get("train_classes"))
        return model.to(device).eval()

    @torch.inference_mode()
    def predict_files(self, paths, top_k: int = 5) -> list[dict]:
        """Decode each file as extraction did and return its top-k labels with probabilities, over the
        classes the head saw in training (the others masked, metrics.mask_unseen; never listed).

        A file that cannot be read gives ``{"path", "error"}`` instead of stopping the others.
        """
        device = next(self.head.parameters()).device
        results = []
        for path in paths:
            try:
                clip = load_inputs(path, self.specs["video"], self.specs["audio"])
                logits = self(clip.video[None].to(device), clip.fbank[None].to(device)).cpu()
            except ClipError as exc:
                results.append({"path": str(path), "error": exc.reason})
                continue
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception as exc:   # as extraction: one bad file is one error, the others still predicted
                log.debug("%s: unexpected error", path, exc_info=True)
                results.append({"path": str(path), "error": unexpected_reason(exc)})
                continue
            probs = torch.softmax(mask_unseen(logits, self.allowed), dim=1)[0]
            top = probs.topk(min(top_k, len(probs) if self.allowed is None else int(self.allowed.sum())))
            results.append({"path": str(path), "has_audio": clip.has_audio,
                            "top": [{"label": self.label_names[i], "probability": float(p)}
                                    for p, i in zip(top.values.tolist(), top.indices.tolist())]})
        return results
