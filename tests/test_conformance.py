"""Conformance: every registered backbone and every registered head, by looping over the registries.

A new backbone or head is tested here by being registered: no list below names one. A backbone
(tiny) is built, preprocesses a synthetic clip through the public call, embeds it, is extracted
into a cache by the extraction runner, and is rebuilt from the cache's description with the same
embeddings; a head is trained a few epochs on a tiny synthetic cache, saved, reloaded, and gives
the logits it gave before saving.
"""
import functools
import numpy as np
import pytest
import torch

import alphafuse.extract.runner as runner
from alphafuse.cache import FeatureSplit, read_split
from alphafuse.data import read_manifest
from alphafuse.data.synth import write_clip
from alphafuse.extract import Backbone, backbone_names, create_backbone, get_backbone
from alphafuse.extract.backbones import rebuild_backbone
from alphafuse.extract.registry import spec_from_dict, spec_kinds
from alphafuse.fuse import TrainConfig, fuse_run, get_head, head_names, load_run, train_head
from alphafuse.fuse.evaluation import split_logits

TOL = 1e-5     # the cache embeds a batch of two clips, the direct call one clip: other BLAS blocking
STEP = 9       # grey levels between consecutive frames of the synthetic clips
FRAMES = 24


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two 2-s clips whose frame t is flat grey 10 + STEP * t (so a fed frame tells its index):
    one with sound, one without an audio stream."""
    root = tmp_path_factory.mktemp("conformance")
    for name, audio in (("sound", True), ("silent", False)):
        write_clip(root / f"{name}.mp4", duration=FRAMES / 12, fps=12, size=(64, 48), audio=audio,
                   frame_fn=lambda t: np.full((48, 64, 3), 10 + STEP * t, np.uint8))
    (root / "m.csv").write_text("path,label,split\nsound.mp4,a,train\nsilent.mp4,b,train\n")
    return read_manifest(root / "m.csv")


@functools.lru_cache(maxsize=None)
def _hf_snapshot() -> str:
    """hf has no random weights: a tiny VideoMAE snapshot saved by transformers stands in."""
    import atexit
    import shutil
    import tempfile

    from tests.hf_snapshots import build
    folder = tempfile.mkdtemp(prefix="alphafuse-hf-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    build("videomae", folder)
    return folder


def tiny(name: str):
    entry = get_backbone(name)
    if name == "hf":
        return create_backbone(name, _hf_snapshot())
    return create_backbone(name, **({"arch": "tiny"} if "arch" in entry.options else {}))


def role_of(name: str, model) -> str:
    """What the built backbone encodes: its registration's modality, or (hf, registered as
    "any") the one its checkpoint gives."""
    return getattr(model, "modality", None) or get_backbone(name).modality


def extract_roles(name: str, model) -> dict:
    """extract_split's keyword for a backbone of this modality."""
    modality = role_of(name, model)
    return {"audiovisual": {"backbone": model}, "video": {"video_model": model},
            "audio": {"audio_model": model}}[modality]


@pytest.mark.slow
@pytest.mark.parametrize("name", backbone_names())
def test_backbone_preprocess_extract_store_rebuild(name, clips, tmp_path, monkeypatch):
    model = tiny(name)
    role = role_of(name, model)
    assert isinstance(model, Backbone)
    specs = model.input_specs(role)

    # The public call: one clip's inputs, named and shaped by input_specs, float32, no batch axis.
    inputs, info = {}, {}
    for clip in clips.split("train"):
        inputs[clip.clip_id], info[clip.clip_id] = model.preprocess(clip.path, with_info=True)
        assert set(inputs[clip.clip_id]) == set(specs)
        for slot, x in inputs[clip.clip_id].items():
            assert x.dtype == torch.float32 and tuple(x.shape) == tuple(specs[slot].output_shape), slot
    assert torch.equal(inputs["sound"].get("video", torch.zeros(0)),
                       model.preprocess(clips.split("train")[0].path).get("video", torch.zeros(0)))
    assert info["sound"]["has_audio"] and not info["silent"]["has_audio"]
    if "video" in specs:
        video = inputs["sound"]["video"]
        # transformers' video models take (T, 3, H, W) per clip; the check reads (3, T, H, W)
        _frames_fed_are_the_indices(video.transpose(0, 1) if name == "hf" else video, info["sound"]["frame_indices"])
    else:
        assert info["sound"]["frame_indices"] is None

    # Extraction's DataLoader yields exactly these tensors (the same code path: bit-equal).
    seen = []
    real_write_batch = runner._write_batch   # every decoded batch the DataLoader yields passes here
    monkeypatch.setattr(runner, "_write_batch", lambda active, done, batch, *a: (seen.append(batch),
                                                                               real_write_batch(active, done, batch, *a)))
    summary = runner.extract_split(clips, "train", tmp_path / "cache", workers=1, batch_size=2,
                                   **extract_roles(name, model))
    assert not summary.failed and len(seen) == 1
    batch = seen[0]
    for row, clip_id in enumerate(batch["clip_id"]):
        for slot in specs:
            assert torch.equal(batch[{"video": "video", "audio": "fbank"}[slot]][row], inputs[clip_id][slot]), slot
        assert bool(batch["has_audio"][row]) == info[clip_id]["has_audio"]

    # The store holds the model's own embeddings of those inputs.
    cache = read_split(summary.cache_path)
    with torch.inference_mode():
        direct = {c: model.extract(role, {k: v[None] for k, v in inputs[c].items()}) for c in cache.clip_ids}
    assert set(cache.embeddings) == set(direct[cache.clip_ids[0]])
    for row, clip_id in enumerate(cache.clip_ids):
        for emb, value in direct[clip_id].items():
            np.testing.assert_allclose(np.asarray(cache.embeddings[emb][row], np.float32), value[0].numpy(),
                                       atol=TOL, rtol=TOL, err_msg=f"{clip_id} {emb}")

    # Rebuilt from the cache's description alone: the same backbone, specs and embeddings.
    rebuilt = rebuild_backbone(cache.backbones[role], model.checkpoint if model.pretrained else None)
    assert rebuilt.fingerprint == model.fingerprint and rebuilt.options == model.options
    for slot, recorded in cache.preprocessing.items():
        assert spec_from_dict(slot, recorded) == specs[slot]
    with torch.inference_mode():
        again = rebuilt.extract(role, {k: v[None] for k, v in inputs["sound"].items()})
    for emb, value in direct["sound"].items():
        assert torch.equal(again[emb], value), emb


def _frames_fed_are_the_indices(video: torch.Tensor, indices: list[int]) -> None:
    """The fed frames' brightness orders exactly as their reported indices (frame t is grey
    10 + STEP * t, and every family decodes a monotone subset of the clip's frames)."""
    first_view = video.reshape(-1, *video.shape[-4:])[0]            # (3, T, S, S)
    brightness = first_view[0].mean(dim=(1, 2)).numpy()
    picked = np.asarray(indices[:first_view.shape[1]])
    assert len(indices) % first_view.shape[1] == 0 and picked.min() >= 0
    for a, b, i, j in zip(brightness, brightness[1:], picked, picked[1:]):
        if i == j:
            assert abs(b - a) < 0.01, (picked, brightness)
        else:
            assert (b - a > 0.01) == (j > i), (picked, brightness)


def test_every_written_spec_kind_reads_back():
    """Caches on disk name these kinds and fields (as data/specs.py wrote them): they keep reading,
    and reading then writing gives the dict back unchanged."""
    written = [("video", {"kind": "tsm_frames", "num_segments": 8, "test_crops": 1, "full_res": False,
                          "temporal_views": 1}),
               ("video", {"kind": "tsam_frames", "num_segments": 16}),
               ("audio", {"kind": "tsam_spectrogram"})]
    assert {d["kind"] for _, d in written} <= set(spec_kinds())
    for slot, d in written:   # fields added since read as what made those caches (the stream's YUV matrix)
        legacy = {"yuv_matrix": "stream"} if d["kind"] in ("tsm_frames", "tsam_frames") else {}
        assert spec_from_dict(slot, d).to_dict() == {**d, **legacy}
    for name in backbone_names():
        model = tiny(name)
        for slot, spec in model.input_specs(role_of(name, model)).items():
            assert spec_from_dict(slot, spec.to_dict()) == spec, (name, slot)
    with pytest.raises(ValueError, match="unknown input spec kind 'nope'; registered: .*tsam_frames"):
        spec_from_dict("video", {"kind": "nope"})


# ----------------------------------------------------------------------------- heads

DIM, CLASSES = 8, 3


def _head_split(split: str, n: int, seed: int) -> FeatureSplit:
    """Every embedding any registered head reads (its default needs): pooled (N, D), sequences
    ``*_tokens`` / ``*_layers`` (N, 3, D); the label is in the pooled embeddings' first axes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    wanted = {e for h in head_names() for e in get_head(h).needs()} | {"video", "audio"}
    embeddings = {}
    for name in sorted(wanted):
        shape = (n, 3, DIM) if name.endswith(("_tokens", "_layers")) else (n, DIM)
        value = rng.normal(0, 1, shape)
        value[..., 0] += 2.0 * labels.reshape((n,) + (1,) * (len(shape) - 2))
        embeddings[name] = value.astype(np.float16 if len(shape) == 3 else np.float32)
    return FeatureSplit(split, [f"{split}{i}" for i in range(n)], labels, label_names=list("abc"),
                        backbones={"video": {"fingerprint": "v"}, "audio": {"fingerprint": "a"}},
                        preprocessing={}, embeddings=embeddings)


@pytest.fixture(scope="module")
def head_splits():
    return _head_split("train", 48, 0), _head_split("val", 12, 1), _head_split("test", 12, 2)


@pytest.fixture
def one_thread():
    """Tiny heads on one torch thread: two threads on a loaded 2-core machine wait on each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("name", head_names())
def test_head_trains_saves_reloads_with_the_same_logits(name, head_splits, tmp_path, one_thread):
    train, val, test = head_splits
    cfg = TrainConfig(head=name, epochs=3, hidden=(8,), batch_size=16, lr=1e-2, seed=1)
    trained = train_head(train, val, cfg).model.eval()
    fuse_run(train, val, test, cfg, tmp_path / "run")
    reloaded, meta = load_run(tmp_path / "run")
    assert meta["head_config"] == trained.config and type(reloaded) is type(trained)
    before, after = split_logits(trained, test), split_logits(reloaded, test)
    assert before.shape == (len(test), CLASSES) and torch.isfinite(before).all()
    assert torch.equal(before, after)   # same seed, same arithmetic: bit-identical
