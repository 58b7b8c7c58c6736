"""The backbones of one extraction in their roles, and the one embedding path from batched
inputs to embeddings: extraction (runner.py) writes what ``embed_batch`` gives, and the
end-to-end model (fuse/model.py) computes with ``embed_inputs`` under the same ``autocast``,
so cached == end-to-end by construction.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np
import torch

from alphafuse.data import VideoConfig

from .registry import Extras

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Roles(dict):
    """Which backbone encodes what in one extraction: {"video": model, "audio": model}, or
    {"audiovisual": model} for one model of both (CAV-MAE, TSAM). A model registered as
    audiovisual may also serve one modality only (CAV-MAE's audio tower beside TimeSformer)."""

    @classmethod
    def of(cls, video_model=None, audio_model=None, backbone=None) -> "Roles":
        if backbone is not None:
            if video_model is not None or audio_model is not None:
                raise ValueError("give either one audio-visual backbone or video and audio backbones, not both")
            return cls(audiovisual=backbone)
        roles = cls({k: m for k, m in (("video", video_model), ("audio", audio_model)) if m is not None})
        if not roles:
            raise ValueError("no backbone to extract with")
        return roles

    def specs(self, spatial_crops: int = 1, temporal_views: int = 1, sampling: str | None = None) -> dict:
        """The data/ specs of each input slot ("video": VideoConfig, "audio": AudioConfig), with
        the views asked for: a video backbone declares its own crop protocol (input_specs's
        spatial_crops); temporal views and another sampling rule apply to any video spec."""
        several = spatial_crops != 1 or temporal_views != 1
        if several and "video" not in self:
            raise ValueError("several views are for a video backbone; an audio-visual backbone takes its own frames")
        specs = {}
        for modality, model in self.items():
            declared = (model.input_specs(modality, spatial_crops=spatial_crops) if modality == "video"
                        else model.input_specs(modality))
            for slot, spec in declared.items():
                if slot in specs and specs[slot] != spec:
                    raise ValueError(f"two backbones need different {slot} preprocessing; use one audio-visual "
                                     f"backbone alone or backbones of one modality each")
                specs[slot] = spec
        if "video" in specs and (temporal_views != 1 or sampling):
            if not isinstance(specs["video"], VideoConfig):
                name = next(m.backbone_name for m in self.values() if hasattr(m, "backbone_name"))
                if sampling or not hasattr(specs["video"], "temporal_views"):
                    raise ValueError(f"the {name} backbone samples its frames by its own reference rule: "
                                     + ("no other sampling rule" if sampling else "no temporal views"))
                specs["video"] = replace(specs["video"], temporal_views=temporal_views)
                return specs
            changes = {"temporal_views": temporal_views, **({"sampling": sampling, "sampling_options": {}}
                                                           if sampling else {})}
            specs["video"] = replace(specs["video"], **changes)
        return specs

    def views(self, specs: dict) -> int:
        video = specs.get("video")
        return video.views if video is not None and "video" in self else 1

    def embedding_info(self, extras: Extras, views: int = 1) -> dict:
        """name -> {"shape", "dtype", "role"[, "views"]} of every embedding the extraction writes."""
        info = {}
        for modality, model in self.items():
            for name, shape in model.embedding_shapes(modality, extras).items():
                if name in info:
                    raise ValueError(f"two backbones both produce a {name!r} embedding")
                # A backbone may declare views of its own (CAV-MAE's 10 frames): {"shape", "views"}.
                declared = dict(shape) if isinstance(shape, dict) else {"shape": list(shape)}
                per_view = views > 1 and modality == "video"
                pooled = "_" not in name      # tokens and layers: fp16 on disk, they are big
                if per_view:
                    declared.update(shape=[views, *declared["shape"]], views=views)
                info[name] = {"dtype": "float32" if pooled else extras.dtype, "role": modality, **declared,
                              "shape": list(declared["shape"])}
        return info


def autocast(device_type: str, precision: str):
    """The autocast extraction runs the backbones under (nothing for fp32): the end-to-end model
    (fuse/model.py) enters the same one, so its embeddings are the cache's."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device_type, dtype=dtype) if dtype else contextlib.nullcontext()


def embed_batch(roles: Roles, batch: dict, device: torch.device, precision: str = "fp32",
                extras: Extras = Extras(), info: dict | None = None) -> dict[str, np.ndarray]:
    """Every backbone on one collated batch -> {embedding name: (B, ...) numpy array}, in the
    dtypes ``info`` gives (float32 unless said otherwise)."""
    info = info if info is not None else roles.embedding_info(extras)
    if not batch["clip_id"]:
        return {name: np.zeros((0, *i["shape"]), np.dtype(i["dtype"])) for name, i in info.items()}
    inputs = {"video": batch["video"].to(device, non_blocking=True),
              "audio": batch["fbank"].to(device, non_blocking=True)}
    with torch.inference_mode(), autocast(device.type, precision):
        out = embed_inputs(roles, inputs, extras)
    return {name: value.float().cpu().numpy().astype(info[name]["dtype"], copy=False) for name, value in out.items()}


def embed_inputs(roles: Roles, inputs: dict, extras: Extras = Extras()) -> dict[str, torch.Tensor]:
    """Every backbone on batched inputs {"video": ..., "audio": ...} -> {embedding name: tensor}.

    The one embedding path: extraction (embed_batch) and the end-to-end model both use it."""
    out = {}
    for modality, model in roles.items():
        out.update(_extract_views(model, modality, inputs, extras))
    return out


def _extract_views(model, modality: str, inputs: dict, extras: Extras) -> dict:
    """model.extract, once per view when the video input has a views axis (B, V, 3, T, H, W):
    every output then gets that axis, (B, V, ...)."""
    video = inputs["video"]
    if modality != "video" or video.ndim != 6:
        return model.extract(modality, inputs, extras)
    views = video.shape[1]
    out = model.extract(modality, {**inputs, "video": video.flatten(0, 1)}, extras)
    return {name: value.unflatten(0, (-1, views)) for name, value in out.items()}
