"""The parity the design rests on: the cached path is the same model as the end-to-end one."""
import json

import numpy as np
import pytest
import torch

from alphafuse.cache import read_split
from alphafuse.data import ClipDataset, read_manifest
from alphafuse.data.synth import write_clip
from alphafuse.extract import CheckpointError, load_ast, load_timesformer
from alphafuse.extract.runner import extract_split
from alphafuse.fuse import TrainConfig, fuse_run, get_head, head_names, load_run, split_logits
from alphafuse.fuse.model import AlphaTransformer
from tests.checkpoints import ast_state, save_pyth, timesformer_state
from tests.inprocess import run_cli

PARITY_TOL = 1e-5


def _cached_logits(run_dir, split):
    """The cached path: the saved head on the cache's embeddings, with evaluation's views rule."""
    head, _ = load_run(run_dir)
    with torch.no_grad():
        return split_logits(head, split)


def _end_to_end_logits(model, manifest, clip_ids):
    clips = [c for c in manifest.clips if c.clip_id in set(clip_ids)]
    items = ClipDataset(clips, manifest.label_names, model.specs["video"], model.specs["audio"])
    batch = items.collate([items[i] for i in range(len(items))])
    assert batch["clip_id"] == list(clip_ids)
    with torch.inference_mode():
        return model(batch["video"], batch["fbank"])


def _extract_and_fuse(manifest, split, tmp_path, video_model, audio_model, cfg, crops=1, limit=None, batch_size=4,
                      **extract):
    summary = extract_split(manifest, split, tmp_path / "cache", video_model, audio_model, batch_size=batch_size,
                            workers=0, spatial_crops=crops, limit=limit, **extract)
    features = read_split(summary.cache_path)
    fuse_run(features, None, None, cfg, tmp_path / "run")
    return features


def _fuse_shared(subset_cache, split, clips, cfg, tmp_path):
    """A head trained on the first ``clips`` clips of ``split`` of the session's whole-subset
    extraction (tests/conftest.py: the README's, tiny backbones), saved in tmp_path/run."""
    features = read_split(subset_cache / f"{split}.h5").take(np.arange(clips))
    fuse_run(features, None, None, cfg, tmp_path / "run")
    return features


@pytest.mark.parametrize("transform, target", [("neg_scalar", "ast"), ("sqrt", "timesformer")])
def test_cached_path_equals_end_to_end_on_real_clips(subset_dir, subset_cache, tmp_path, transform, target):
    manifest = read_manifest(subset_dir / "manifest.csv")
    cfg = TrainConfig(transform=transform, target=target, epochs=3, hidden=(32,))
    features = _fuse_shared(subset_cache, "val", 6, cfg, tmp_path)
    model = AlphaTransformer.from_run(tmp_path / "run")
    cached = _cached_logits(tmp_path / "run", features)
    end_to_end = _end_to_end_logits(model, manifest, features.clip_ids)
    assert cached.shape == (6, len(manifest.label_names))
    assert (cached - end_to_end).abs().max() < PARITY_TOL


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    # Awkward but readable clips: odd and portrait sizes, no audio, 5.1 audio, variable frame rate.
    root = tmp_path_factory.mktemp("clips")
    write_clip(root / "odd.mp4", duration=1.0, size=(65, 33))
    write_clip(root / "portrait.mkv", duration=1.5, size=(36, 64), channels=2, sample_rate=48000)
    write_clip(root / "silent.mp4", duration=1.0, size=(48, 48), audio=False)
    write_clip(root / "surround.mp4", duration=1.0, size=(64, 48), channels=6)
    write_clip(root / "vfr.mp4", frame_times=[0, 0.04, 0.3, 0.31, 0.9, 1.0], size=(64, 48))
    write_clip(root / "short.mp4", duration=0.2, fps=25, size=(32, 32))
    names = ["odd.mp4", "portrait.mkv", "silent.mp4", "surround.mp4", "vfr.mp4", "short.mp4"]
    (root / "manifest.csv").write_text("path,label,split\n" + "".join(
        f"{n},{'ab'[i % 2]},train\n" for i, n in enumerate(names)))
    return read_manifest(root / "manifest.csv")


# Every registered head, on a cache with tokens and layers (float32, so the comparison is exact in
# fp32). Only sizes and a transform are set here (small and exercised); a new head needs no entry.
SMALL_OPTIONS = {"bottleneck": {"dim": 16, "layers": 1, "bottlenecks": 2, "num_heads": 2}}
TRANSFORMS = {"concat": dict(transform="scale", alpha=2.0, target="video")}
TIMESFORMER_AST = {"video", "audio", "video_tokens", "audio_tokens", "video_layers", "audio_layers"}


@pytest.mark.parametrize("head", head_names())
def test_every_head_cached_path_equals_end_to_end_on_synthesized_clips(synthesized, tmp_path, head):
    options, transform = SMALL_OPTIONS.get(head, {}), TRANSFORMS.get(head, {})
    missing = set(get_head(head).needs(options)) - TIMESFORMER_AST
    if missing:
        pytest.skip(f"head {head} reads {', '.join(sorted(missing))}, which TimeSformer + AST do not give "
                    "(the CAV-MAE test below covers it)")
    cfg = TrainConfig(head=head, head_options=options, epochs=2, hidden=(16,), **transform)
    features = _extract_and_fuse(synthesized, "train", tmp_path, load_timesformer(arch="tiny", num_frames=4),
                                 load_ast(arch="tiny", input_tdim=256), cfg, tokens=True, layers="all",
                                 token_dtype="float32")
    assert len(features) == 6 and not features.has_audio[features.clip_ids.index("silent")]
    model = AlphaTransformer.from_run(tmp_path / "run")
    cached = _cached_logits(tmp_path / "run", features)
    assert (cached - _end_to_end_logits(model, synthesized, features.clip_ids)).abs().max() < PARITY_TOL


def test_float16_token_caches_agree_to_their_storage_precision(synthesized, tmp_path):
    # The default storage: the end-to-end model rounds the tokens as the cache does; the rest of
    # the difference is fp32 noise that can flip a float16 rounding (one float16 step, 1e-3 relative).
    # A learning rate of 1e-2 gives logits that differ between clips by tenths, so the tolerance
    # (1% of that spread) is broken by a constant, zero or otherwise wrong end-to-end output.
    cfg = TrainConfig(head="bottleneck", head_options={"dim": 16, "layers": 1, "bottlenecks": 2, "num_heads": 2},
                      epochs=5, lr=1e-2)
    features = _extract_and_fuse(synthesized, "train", tmp_path, load_timesformer(arch="tiny", num_frames=4),
                                 load_ast(arch="tiny", input_tdim=256), cfg, tokens=True)
    assert features.embeddings["video_tokens"].dtype == np.float16
    model = AlphaTransformer.from_run(tmp_path / "run")
    cached = _cached_logits(tmp_path / "run", features)
    spread = (cached - cached.mean(0)).abs().max()
    assert spread > 0.05, "the head's outputs must differ between clips for this test to mean anything"
    assert (cached - _end_to_end_logits(model, synthesized, features.clip_ids)).abs().max() < 0.01 * spread


def test_a_bf16_cache_is_reproduced_end_to_end_in_bf16(synthesized, tmp_path):
    # The end-to-end model must run the backbones in the cache's precision: bf16 embeddings differ
    # from fp32 ones by about 1% of their scale, far beyond the tolerance (so an fp32 end-to-end fails).
    cfg = TrainConfig(transform="neg_scalar", target="ast", epochs=2, hidden=(16,))
    features = _extract_and_fuse(synthesized, "train", tmp_path, load_timesformer(arch="tiny", num_frames=4),
                                 load_ast(arch="tiny", input_tdim=256), cfg, precision="bf16", batch_size=6)
    model = AlphaTransformer.from_run(tmp_path / "run")   # one batch of all six clips, as below: the
    assert model.precision == {"video": "bf16", "audio": "bf16"}   # same bf16 kernels: only rounding noise
    clips = [c for c in synthesized.clips if c.clip_id in set(features.clip_ids)]
    items = ClipDataset(clips, synthesized.label_names, model.specs["video"], model.specs["audio"])
    batch = items.collate([items[i] for i in range(len(items))])
    with torch.inference_mode():
        bf16 = model.embed(batch["video"], batch["fbank"])
        model.precision = {role: "fp32" for role in model.precision}
        fp32 = model.embed(batch["video"], batch["fbank"])
    for name in ("video", "audio"):
        cached = torch.from_numpy(np.asarray(features.embeddings[name]))
        tolerance = 1e-3 * cached.abs().max()
        assert (cached - bf16[name]).abs().max() < tolerance, name
        assert (cached - fp32[name]).abs().max() > 3 * tolerance, f"{name}: bf16 and fp32 agree too well to tell apart"


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
    assert features.video.shape == (len(features), 3, 64)
    model = AlphaTransformer.from_run(tmp_path / "run")
    assert model.backbones["video"].pretrained and model.specs["video"].spatial_crops == 3
    cached = _cached_logits(tmp_path / "run", features)
    assert (cached - _end_to_end_logits(model, manifest, features.clip_ids)).abs().max() < PARITY_TOL

    # Another file in the checkpoint's place is refused, naming it.
    torch.save(ast_state(dim=64, depth=2, seed=9), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth: sha256 .* is not the checkpoint"):
        AlphaTransformer.from_run(tmp_path / "run", {"audio": tmp_path / "other.pth"})


def test_predict_command(subset_dir, subset_cache, tmp_path):
    manifest = read_manifest(subset_dir / "manifest.csv")
    _fuse_shared(subset_cache, "val", 4, TrainConfig(epochs=2, hidden=(16,)), tmp_path)
    present = [str(c.path) for c in manifest.split("val")[:2]]
    code, out, err = run_cli("predict", *present, tmp_path / "nope.mp4", "--run", tmp_path / "run", "--top-k", "3",
                             "--json", "--device", "cpu")
    assert code == 1, err  # one file could not be read: reported, the others classified
    results = json.loads(out)
    assert [r["path"] for r in results] == present + [str(tmp_path / "nope.mp4")]
    assert "not found" in results[2]["error"]
    for r in results[:2]:
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(t["label"] in manifest.label_names for t in r["top"])


@pytest.mark.parametrize("head, options, hidden", [("probe", {"input": "joint"}, ()), ("concat", {}, (16,))])
def test_cavmae_heads_cached_path_equals_end_to_end(synthesized, tmp_path, head, options, hidden):
    # CAV-MAE's per-frame video and joint embeddings (10 views): a linear probe on joint, and the
    # paper's head on audio and frame-averaged video; evaluation averages the frames' softmax.
    from alphafuse.extract import load_cavmae
    summary = extract_split(synthesized, "train", tmp_path / "cache", backbone=load_cavmae(arch="tiny", audio_length=128),
                            batch_size=3, workers=0)
    features = read_split(summary.cache_path)
    fuse_run(features, None, None, TrainConfig(head=head, head_options=options, epochs=2, hidden=hidden),
             tmp_path / "run")
    model = AlphaTransformer.from_run(tmp_path / "run")
    assert set(model.backbones) == {"audiovisual"}
    cached = _cached_logits(tmp_path / "run", features)
    assert (cached - _end_to_end_logits(model, synthesized, features.clip_ids)).abs().max() < PARITY_TOL


def test_predict_never_lists_a_class_absent_from_training(subset_dir, subset_cache, tmp_path):
    """predict masks the classes the head never saw, as fuse, evaluate and grid do: with top-k as
    large as the vocabulary, only the trained classes are listed, their probabilities summing to 1."""
    manifest = read_manifest(subset_dir / "manifest.csv")
    features = _fuse_shared(subset_cache, "val", 4, TrainConfig(epochs=1, hidden=(16,)), tmp_path)
    seen = {features.label_names[c] for c in np.unique(features.labels)}
    assert len(seen) < len(manifest.label_names)   # some classes were never trained
    model = AlphaTransformer.from_run(tmp_path / "run")
    paths = [c.path for c in manifest.clips if c.clip_id in set(features.clip_ids)][:2]
    for result in model.predict_files(paths, top_k=len(manifest.label_names)):
        assert {t["label"] for t in result["top"]} == seen
        assert sum(t["probability"] for t in result["top"]) == pytest.approx(1.0, abs=1e-5)


def test_mixed_pair_of_stores_equals_end_to_end_and_evaluate_equals_predict(synthesized, tmp_path):
    # TimeSformer + AST extracted first, CAV-MAE's audio tower added beside them; the run trained
    # on TimeSformer + CAV-MAE by name rebuilds exactly those encoders.
    import csv

    from alphafuse.cache import open_split
    from alphafuse.extract import create_backbone
    from alphafuse.fuse.commands import evaluate_command

    cache = tmp_path / "cache"
    extract_split(synthesized, "train", cache, load_timesformer(arch="tiny", num_frames=4),
                  load_ast(arch="tiny", input_tdim=256), workers=0)
    summary = extract_split(synthesized, "train", cache, load_timesformer(arch="tiny", num_frames=4),
                            create_backbone("cavmae", arch="tiny", audio_length=128), workers=0)
    assert {s.backbone: s.status for s in summary.stores} == {"timesformer": "reused", "cavmae": "written"}
    features = open_split(cache, "train", audio="cavmae")
    fuse_run(features, None, None, TrainConfig(transform="neg_scalar", target="audio", epochs=2, hidden=(16,)),
             tmp_path / "run")
    _, meta = load_run(tmp_path / "run")
    assert meta["stores"] == features.attrs["stores"] and meta["stores"]["audio"].startswith("cavmae-")
    model = AlphaTransformer.from_run(tmp_path / "run")
    assert model.backbones["video"].backbone_name == "timesformer" and model.backbones["audio"].backbone_name == "cavmae"
    cached = _cached_logits(tmp_path / "run", features)
    assert (cached - _end_to_end_logits(model, synthesized, features.clip_ids)).abs().max() < PARITY_TOL

    # evaluate reads the run's own stores (the folder has two audio encoders) and agrees with predict.
    evaluate_command(tmp_path / "run", "train", None, tmp_path / "p.csv", "best", True, echo=lambda _: None)
    with open(tmp_path / "p.csv", newline="") as f:
        rows = {r["clip_id"]: r for r in csv.DictReader(f)}
    clips = {c.clip_id: c.path for c in synthesized.clips}
    for result in model.predict_files([clips[c] for c in features.clip_ids], top_k=2):
        row = rows[next(c for c, p in clips.items() if str(p) == result["path"])]
        for t in result["top"]:
            assert abs(float(row[t["label"]]) - t["probability"]) < 1e-4


def test_a_schema_2_folder_still_trains_evaluates_and_predicts(synthesized, tmp_path):
    # One file holding both encoders, as alphafuse wrote caches before stores.
    import h5py

    from alphafuse.cache import FeatureSplit, open_split, write_split
    from alphafuse.fuse.commands import evaluate_command

    extract_split(synthesized, "train", tmp_path / "stores", load_timesformer(arch="tiny", num_frames=4),
                  load_ast(arch="tiny", input_tdim=256), workers=0)
    both = open_split(tmp_path / "stores", "train")
    attrs = {k: v for k, v in both.attrs.items() if k not in ("stores", "extraction_by_role")}
    legacy = tmp_path / "legacy"
    write_split(legacy / "train.h5", FeatureSplit(
        "train", both.clip_ids, both.labels, has_audio=both.has_audio, label_names=both.label_names,
        backbones=both.backbones, preprocessing=both.preprocessing, attrs=attrs, embeddings=both.embeddings,
        embedding_info={k: {kk: vv for kk, vv in v.items() if kk != "store"} for k, v in both.embedding_info.items()}))
    with h5py.File(legacy / "train.h5", "r+") as f:
        f.attrs["schema_version"] = 2
    features = open_split(legacy, "train")
    assert features.path == legacy / "train.h5" and "stores" not in features.attrs
    fuse_run(features, None, None, TrainConfig(epochs=2, hidden=(16,)), tmp_path / "run")
    metrics = evaluate_command(tmp_path / "run", "train", None, None, "best", True, echo=lambda _: None)
    assert metrics["num_clips"] == 6
    model = AlphaTransformer.from_run(tmp_path / "run")
    cached = _cached_logits(tmp_path / "run", features)
    assert (cached - _end_to_end_logits(model, synthesized, features.clip_ids)).abs().max() < PARITY_TOL
