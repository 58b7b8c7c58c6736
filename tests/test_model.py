"""The parity the design rests on: the cached path is the same model as the end-to-end one."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from cache import read_split
from data import ClipDataset, read_manifest
from data.synth import write_clip
from extract import CheckpointError, load_ast, load_timesformer
from extract.runner import extract_split
from fuse import TrainConfig, fuse_run, load_run
from fuse.model import AlphaTransformer
from tests.checkpoints import ast_state, save_pyth, timesformer_state
from tests.conftest import REPO

PARITY_TOL = 1e-5


def _cached_logits(run_dir, split):
    head, _ = load_run(run_dir)
    with torch.no_grad():
        return head(torch.from_numpy(split.video), torch.from_numpy(split.audio))


def _end_to_end_logits(model, manifest, clip_ids):
    clips = [c for c in manifest.clips if c.clip_id in set(clip_ids)]
    items = ClipDataset(clips, manifest.label_names, model.video_config(), model.audio_config())
    batch = items.collate([items[i] for i in range(len(items))])
    assert batch["clip_id"] == list(clip_ids)
    with torch.inference_mode():
        return model(batch["video"], batch["fbank"])


def _extract_and_fuse(manifest, split, tmp_path, video_model, audio_model, cfg, crops=1, limit=None):
    summary = extract_split(manifest, split, tmp_path / "cache", video_model, audio_model, batch_size=4,
                            workers=0, spatial_crops=crops, limit=limit)
    features = read_split(summary.cache_path)
    fuse_run(features, None, None, cfg, tmp_path / "run")
    return features


@pytest.mark.parametrize("transform, target", [("neg_scalar", "ast"), ("sqrt", "timesformer")])
def test_cached_path_equals_end_to_end_on_real_clips(subset_dir, tmp_path, transform, target):
    manifest = read_manifest(subset_dir / "manifest.csv")
    cfg = TrainConfig(transform=transform, target=target, epochs=3, hidden=(32,))
    features = _extract_and_fuse(manifest, "val", tmp_path, load_timesformer(arch="tiny"), load_ast(arch="tiny"),
                                 cfg, limit=6)
    model = AlphaTransformer.from_run(tmp_path / "run")
    cached = _cached_logits(tmp_path / "run", features)
    end_to_end = _end_to_end_logits(model, manifest, features.clip_ids)
    assert cached.shape == (6, len(manifest.label_names))
    assert (cached - end_to_end).abs().max() < PARITY_TOL


def test_cached_path_equals_end_to_end_on_synthesized_clips(tmp_path):
    # Awkward but readable clips: odd and portrait sizes, no audio, 5.1 audio, variable frame rate.
    root = tmp_path / "clips"
    write_clip(root / "odd.mp4", duration=1.0, size=(65, 33))
    write_clip(root / "portrait.mkv", duration=1.5, size=(36, 64), channels=2, sample_rate=48000)
    write_clip(root / "silent.mp4", duration=1.0, size=(48, 48), audio=False)
    write_clip(root / "surround.mp4", duration=1.0, size=(64, 48), channels=6)
    write_clip(root / "vfr.mp4", frame_times=[0, 0.04, 0.3, 0.31, 0.9, 1.0], size=(64, 48))
    write_clip(root / "short.mp4", duration=0.2, fps=25, size=(32, 32))
    names = ["odd.mp4", "portrait.mkv", "silent.mp4", "surround.mp4", "vfr.mp4", "short.mp4"]
    (root / "manifest.csv").write_text("path,label,split\n" + "".join(
        f"{n},{'ab'[i % 2]},train\n" for i, n in enumerate(names)))
    manifest = read_manifest(root / "manifest.csv")
    features = _extract_and_fuse(manifest, "train", tmp_path, load_timesformer(arch="tiny"), load_ast(arch="tiny"),
                                 TrainConfig(transform="scale", alpha=2.0, target="video", epochs=2, hidden=(16,)))
    assert len(features) == 6 and not features.has_audio[features.clip_ids.index("silent")]
    model = AlphaTransformer.from_run(tmp_path / "run")
    cached = _cached_logits(tmp_path / "run", features)
    assert (cached - _end_to_end_logits(model, manifest, features.clip_ids)).abs().max() < PARITY_TOL


def test_parity_with_checkpoints_and_three_views(subset_dir, tmp_path):
    # Pretrained (official-layout) backbones are found again through the recorded paths and sha256.
    save_pyth(tmp_path / "tsf.pyth", timesformer_state(dim=64, depth=2, num_frames=16, img_size=224))
    torch.save(ast_state(dim=64, depth=2), tmp_path / "ast.pth")
    video_model = load_timesformer(tmp_path / "tsf.pyth", num_frames=4, img_size=224, arch="tiny")
    audio_model = load_ast(tmp_path / "ast.pth", arch="tiny")
    manifest = read_manifest(subset_dir / "manifest.csv")
    features = _extract_and_fuse(manifest, "test", tmp_path, video_model, audio_model,
                                 TrainConfig(transform="pos_scalar", target="video", epochs=2, hidden=(16,)),
                                 crops=3, limit=4)
    model = AlphaTransformer.from_run(tmp_path / "run")
    assert model.video_backbone.pretrained and model.video_config().spatial_crops == 3
    cached = _cached_logits(tmp_path / "run", features)
    assert (cached - _end_to_end_logits(model, manifest, features.clip_ids)).abs().max() < PARITY_TOL

    # Another file in the checkpoint's place is refused, naming it.
    torch.save(ast_state(dim=64, depth=2, seed=9), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth: sha256 .* is not the checkpoint"):
        AlphaTransformer.from_run(tmp_path / "run", audio_checkpoint=tmp_path / "other.pth")


def test_predict_command(subset_dir, tmp_path):
    manifest = read_manifest(subset_dir / "manifest.csv")
    _extract_and_fuse(manifest, "val", tmp_path, load_timesformer(arch="tiny"), load_ast(arch="tiny"),
                      TrainConfig(epochs=2, hidden=(16,)), limit=4)
    present = [str(c.path) for c in manifest.split("val")[:2]]
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "predict", *present, str(tmp_path / "nope.mp4"),
                           "--run", str(tmp_path / "run"), "--top-k", "3", "--json", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1  # one file could not be read: reported, the others classified
    results = json.loads(proc.stdout)
    assert [r["path"] for r in results] == present + [str(tmp_path / "nope.mp4")]
    assert "not found" in results[2]["error"]
    for r in results[:2]:
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(t["label"] in manifest.label_names for t in r["top"])


# -- any head end to end ----------------------------------------------------------------------

class TokenBackbone(torch.nn.Module):
    """A stand-in for a registry backbone: ``embed(**inputs, names)`` gives a pooled embedding
    (per view when ``views``) and tokens, from a fixed random projection of its input."""

    def __init__(self, modality: str, in_dim: int, dim: int = 12, tokens: int = 4, views: int | None = None):
        super().__init__()
        self.modality, self.views, self.tokens = modality, views, tokens
        self.proj = torch.nn.Linear(in_dim, dim * tokens)
        self.input = "video" if modality == "video" else "fbank"

    def input_specs(self, modality):
        return {self.input: None}

    def embed(self, names=None, **inputs):
        x = inputs[self.input]
        tokens = self.proj(x.flatten(1)).unflatten(1, (self.tokens, -1))
        pooled = tokens.mean(1)
        if self.views:
            pooled = torch.stack([pooled + 0.5 * torch.sin(pooled * (v + 1)) for v in range(self.views)], dim=1)
        out = {self.modality: pooled, f"{self.modality}_tokens": tokens}
        return {k: v for k, v in out.items() if names is None or k in names}


@pytest.mark.parametrize("head, views", [("bottleneck", None), ("gated", 3)])
def test_any_head_end_to_end_equals_the_cached_path(tmp_path, head, views):
    """The whole model (backbones' embed, the views rule, the head) gives the logits that the
    cached embeddings give through evaluation."""
    from cache import FeatureSplit
    from fuse import split_logits

    torch.manual_seed(0)
    video_bb, audio_bb = TokenBackbone("video", 2 * 3 * 4, views=views), TokenBackbone("audio", 5 * 3)
    n = 24
    raw = {"video": torch.randn(n, 2, 3, 4), "fbank": torch.randn(n, 5, 3)}
    with torch.no_grad():
        embeddings = {**video_bb.embed(video=raw["video"]), **audio_bb.embed(fbank=raw["fbank"])}
    labels = np.arange(n) % 3
    info = {"video": {"views": views}} if views else {}
    split = FeatureSplit("train", [f"c{i}" for i in range(n)], labels, label_names=["a", "b", "c"],
                         embeddings={k: v.numpy() for k, v in embeddings.items()}, embedding_info=info)
    options = {"dim": 8, "layers": 1, "bottlenecks": 2, "num_heads": 2} if head == "bottleneck" else {}
    fuse_run(split, None, None, TrainConfig(head=head, head_options=options, epochs=2, hidden=(8,)), tmp_path / "run")
    trained, meta = load_run(tmp_path / "run")
    model = AlphaTransformer(video_bb, audio_bb, trained, meta["label_names"], embedding_info=meta["embedding_info"])
    with torch.no_grad():
        end_to_end = model(raw["video"], raw["fbank"])
    assert (end_to_end - split_logits(trained, split)).abs().max() < PARITY_TOL
    # A backbone that cannot give what the head reads is named.
    plain = AlphaTransformer(torch.nn.Identity(), torch.nn.Identity(), trained)
    if head == "bottleneck":
        with pytest.raises(ValueError, match="not video_tokens, which the bottleneck head reads"):
            plain(raw["video"], raw["fbank"])
