"""The alpha-transformer end to end: frozen backbones, then any trained fusion head.

Training never needs this module (it runs on cached embeddings); it exists to use a trained
head on new videos, and to prove that the cached path and the whole model agree. It embeds
through extraction's own code (extract.embed.embed_inputs) with the backbones, preprocessing
and extras the cache recorded, rounds what the cache stores in float16 the same way, and scores
embeddings with views by the evaluation rule (the mean of the per-view softmax, fuse/inputs.py).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from alphafuse.data import ClipError, load_inputs
from alphafuse.data.errors import unexpected_reason
from alphafuse.extract.backbones import rebuild_backbone
from alphafuse.extract.registry import Extras, spec_from_dict
from alphafuse.extract.embed import PRECISIONS, Roles, autocast, embed_inputs

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
                 extraction: dict | None = None, extraction_by_role: dict | None = None, train_classes=None):
        super().__init__()
        self.backbones = nn.ModuleDict(roles)
        self.head = head
        self.label_names = list(label_names or [])
        # What predict_files may predict: the classes the head saw in training (None: all).
        self.allowed = None if train_classes is None else allowed_classes(self.label_names, train_classes)
        self.specs = {slot: spec_from_dict(slot, d) for slot, d in (preprocessing or {}).items()}
        self.embedding_info = dict(embedding_info or {})
        names = head.input_names()
        # Each store records its own extras and precision (one encoder's with layers, or in bf16,
        # beside one's without): each backbone embeds as its store was extracted.
        by_role = {role: (extraction_by_role or {}).get(role) or extraction or {} for role in roles}
        self.extras = {role: self._extras(names, by_role[role]) for role in roles}
        # The backbones run in the precision their cache was extracted in (extraction's autocast),
        # so a head trained on bf16 embeddings sees bf16 embeddings end to end too.
        self.precision = {role: by_role[role].get("precision", "fp32") for role in roles}
        unknown = sorted({p for p in self.precision.values() if p not in PRECISIONS})
        if unknown:
            raise ValueError(f"the cache was extracted in precision {unknown[0]!r}, which this version "
                             f"cannot reproduce (known: {', '.join(PRECISIONS)})")

    @staticmethod
    def _extras(names, extraction: dict) -> Extras:
        layers = extraction.get("layers")
        return Extras(tokens=any(n.endswith("_tokens") for n in names),
                      layers=(tuple(layers) if isinstance(layers, list) else layers)
                      if any(n.endswith("_layers") for n in names) else None,
                      dtype=extraction.get("dtype", "float16"))

    def embed(self, video: torch.Tensor, audio: torch.Tensor) -> dict:
        """The embeddings the head reads, as the cache holds them (float16 ones rounded likewise)."""
        out, stored = {}, {}
        for role, backbone in self.backbones.items():
            extras = self.extras[role]
            with autocast(video.device.type, self.precision[role]):
                got = embed_inputs(Roles({role: backbone}), {"video": video, "audio": audio}, extras)
            out.update(got)
            stored.update({n: torch.float16 if extras.dtype == "float16" else torch.float32 for n in got})
        wanted = self.head.input_names()
        missing = [n for n in wanted if n not in out]
        if missing:
            raise ValueError(f"the backbones give {', '.join(out)}, not {', '.join(missing)}, which the "
                             f"{self.head.name} head reads")
        return {n: out[n].to(stored[n]).float() if n.endswith(("_tokens", "_layers")) else out[n].float()
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

        The backbones are those of the stores the run was trained on, from what they recorded
        (the run's ``backbones`` and ``stores``): random ones from their seed, pretrained
        ones from their checkpoint (``checkpoints[role]``, else where extraction read it), whose
        sha256 must match the cache's fingerprint.
        """
        head, meta = load_run(run_dir, which)
        given, sources = checkpoints or {}, meta.get("sources") or {}
        roles = {role: rebuild_backbone(description, given.get(role) or sources.get(role))
                 for role, description in meta["backbones"].items()}
        model = cls(roles, head, meta["label_names"], meta["preprocessing"], meta.get("embedding_info"),
                    meta.get("extraction"), meta.get("extraction_by_role"), meta.get("train_classes"))
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
