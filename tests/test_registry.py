"""A backbone is a plug-in: registering it is all extraction, caches, rebuilding and the CLI need."""
import pkgutil

import numpy as np
import pytest
import torch
from torch import nn

import alphafuse.extract as extract
from alphafuse.cache import read_split
from alphafuse.data import VideoConfig, read_manifest
from alphafuse.data.synth import write_clip
from alphafuse.extract import backbone_names, create_backbone, get_backbone, load_ast, register_backbone
from alphafuse.extract.backbones import rebuild_backbone
from alphafuse.extract.checkpoint import build_backbone
from alphafuse.extract.registry import Extras
from alphafuse.extract.runner import extract_split
from alphafuse.fuse import TrainConfig, fuse_run
from alphafuse.fuse.model import AlphaTransformer


class FrameMean(nn.Module):
    """A toy video backbone: a linear map of each frame's mean colour, averaged over frames."""

    def __init__(self, dim: int = 8, num_frames: int = 3):
        super().__init__()
        self.num_frames, self.embed_dim = num_frames, dim
        self.proj = nn.Linear(3, dim)

    def input_specs(self, modality="video", spatial_crops=1):
        return {"video": VideoConfig(num_frames=self.num_frames, img_size=32, spatial_crops=spatial_crops)}

    def embedding_shapes(self, modality="video", extras=Extras()):
        return {"video": (self.embed_dim,)}

    def forward_features(self, video):
        return self.proj(video.mean(dim=(3, 4)).transpose(1, 2))       # (B, T, dim)

    def extract(self, modality, inputs, extras=Extras()):
        return {"video": self.forward_features(inputs["video"]).mean(dim=1)}


@register_backbone("framemean_test", modality="video", help="a toy backbone registered by a test")
def load_framemean(checkpoint=None, dim: int = 8, num_frames: int = 3, seed: int = 0):
    config = dict(model="framemean_test", dim=dim, num_frames=num_frames)
    return build_backbone(lambda: FrameMean(dim, num_frames), "FrameMean", config, checkpoint, seed,
                          lambda sd, model: sd)


def test_every_family_module_is_discovered_and_registered():
    modules = {m.name for m in pkgutil.iter_modules(extract.__path__)} - extract._INFRASTRUCTURE
    families = {m for m in modules if not m.endswith("_inputs")}
    # A family's second module (its preprocessing) sits beside its model file, never alone.
    assert {m.removesuffix("_inputs") for m in modules - families} <= families
    # Every family file registers a backbone: a new file is discovered without a list to edit.
    registered_in = {get_backbone(n).build.__module__.rsplit(".", 1)[-1] for n in backbone_names()}
    assert families <= registered_in
    assert {"ast", "cavmae", "timesformer", "tsam", "tsm"} <= families
    assert set(backbone_names("video")) >= {"timesformer", "tsm", "cavmae", "tsam"}
    assert "tsm" not in backbone_names("audio") and get_backbone("tsam").modality == "audiovisual"


def test_options_are_checked_by_name_and_type():
    with pytest.raises(ValueError, match="backbone framemean_test has no option frames; its options are dim=8"):
        create_backbone("framemean_test", frames=2)
    with pytest.raises(ValueError, match=r"framemean_test\.dim must be a int .*got '8'"):
        create_backbone("framemean_test", dim="8")
    with pytest.raises(ValueError, match="unknown backbone 'nope'; registered: ast, cavmae"):
        create_backbone("nope")


def test_a_registered_backbone_extracts_rebuilds_and_predicts(tmp_path):
    for i in range(4):
        write_clip(tmp_path / f"c{i}.mp4", duration=1.0, size=(40, 30),
                   frame_fn=lambda t, i=i: np.full((30, 40, 3), 40 * i + t, np.uint8))
    (tmp_path / "m.csv").write_text("path,label,split\n" + "".join(f"c{i}.mp4,{'ab'[i % 2]},train\n" for i in range(4)))
    manifest = read_manifest(tmp_path / "m.csv")
    video = create_backbone("framemean_test", dim=6, seed=3)
    cache = read_split(extract_split(manifest, "train", tmp_path / "cache", video, load_ast(arch="tiny", input_tdim=64),
                                     workers=0).cache_path)
    assert cache.video.shape == (4, 6) and cache.backbones["video"]["name"] == "framemean_test"
    assert cache.backbones["video"]["options"] == {"dim": 6, "num_frames": 3, "seed": 3}
    rebuilt = rebuild_backbone(cache.backbones["video"])
    assert torch.equal(rebuilt.proj.weight, video.proj.weight)
    fuse_run(cache, None, None, TrainConfig(epochs=1, hidden=(4,)), tmp_path / "run")
    assert len(AlphaTransformer.from_run(tmp_path / "run").predict_files([tmp_path / "c0.mp4"], top_k=1)[0]["top"]) == 1


def test_a_build_lacking_what_the_backbone_protocol_states_is_refused(monkeypatch):
    import alphafuse.extract.registry as registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))   # registered for this test only

    class SpecsOnly(nn.Module):
        def input_specs(self, modality="video"):
            return {"video": VideoConfig(num_frames=2, img_size=32)}

    @register_backbone("specs_only_test", modality="video")
    def load_specs_only(checkpoint=None, seed: int = 0):
        return build_backbone(SpecsOnly, "SpecsOnly", dict(model="specs_only_test"), checkpoint, seed, lambda sd, m: sd)

    with pytest.raises(TypeError, match="backbone specs_only_test: SpecsOnly lacks embedding_shapes, extract, "
                                        "forward_features"):
        create_backbone("specs_only_test")
    assert isinstance(create_backbone("framemean_test"), registry.Backbone)
