"""fuse/heads/ and the generic training loop: the registry, each head's arithmetic and behaviour,
modality dropout, views, lazily read token caches, early stopping, a cache's own logits.

The synthetic task is tests/test_fuse.py's (6 classes: 0-2 told apart by video only, 3-5 by
audio only), with token and layer embeddings added around the pooled ones.
"""
import csv
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alphafuse.cache import CacheError, FeatureSplit, read_split, write_split
from alphafuse.fuse import (HeadInputs, TrainConfig, create_head, evaluate_backbone_logits, evaluate_run, fuse_run,
                  get_head, head_defaults, head_from_config, head_help, head_names, load_run, predict_logits,
                  split_logits, train_epoch, train_head)
from alphafuse.fuse.heads import drop_modalities
from alphafuse.fuse.train import single_thread
from tests.test_fuse import BACKBONES, DIM, FAST, NAMES, NUM_CLASSES, PREPROCESSING, UNIMODAL_CEILING, make_split

TOKENS = {"video": 3, "audio": 5}
LAYERS = 3
SIGNAL_LAYER = 1
TINY_MBT = {"dim": 16, "layers": 1, "bottlenecks": 2, "num_heads": 2}


def with_extras(split: FeatureSplit, seed: int, views: int | None = None) -> FeatureSplit:
    """``split`` plus float16 tokens (each the pooled embedding plus token noise) and layers (only
    layer SIGNAL_LAYER carries the pooled embedding, the others are noise); with ``views``, the
    pooled video embedding as (N, views, D) views around it."""
    rng = np.random.default_rng(seed)
    n = len(split)
    extra = {}
    for m, pooled in (("video", split.video), ("audio", split.audio)):
        extra[f"{m}_tokens"] = (pooled[:, None] + rng.normal(0, 0.5, (n, TOKENS[m], DIM))).astype(np.float16)
        layers = rng.normal(0, 1.5, (n, LAYERS, DIM))
        layers[:, SIGNAL_LAYER] = pooled
        extra[f"{m}_layers"] = layers.astype(np.float16)
    info = {}
    video = split.video
    if views:
        video = split.video[:, None] + rng.normal(0, 0.3, (n, views, DIM))
        info["video"] = {"views": views}
    return FeatureSplit(split.split, split.clip_ids, split.labels, has_audio=split.has_audio,
                        label_names=split.label_names, backbones=split.backbones, preprocessing=split.preprocessing,
                        embeddings={"video": video, "audio": split.audio, **extra}, embedding_info=info)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (after conftest's two): on a shared 2-core machine, two threads per tiny
    step wait on each other (a tiny bottleneck head trained 10x slower under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def splits():
    return (with_extras(make_split("train", 240, 0), 10), with_extras(make_split("val", 60, 1), 11),
            with_extras(make_split("test", 60, 2), 12))


def batch_of(split, names, rows=slice(0, 7)):
    return {n: torch.from_numpy(np.asarray(split.embeddings[n][rows], dtype=np.float32)) for n in names}


# -- registry ---------------------------------------------------------------------------------

def test_registry_names_help_defaults_and_needs():
    # Every file of fuse/heads/ but the shared base registers a head: a new file needs no list here.
    import pkgutil

    import alphafuse.fuse.heads as heads_package
    files = {m.name for m in pkgutil.iter_modules(heads_package.__path__)} - {"base"}
    assert files <= {get_head(name).cls.__module__.rsplit(".", 1)[-1] for name in head_names()}
    assert {"bottleneck", "concat", "gated", "late", "layers", "probe"} <= set(head_names())
    assert all(text and "\n" not in text for text in head_help().values())
    assert head_defaults("bottleneck") == {"dim": 256, "layers": 4, "bottlenecks": 4, "num_heads": 4,
                                           "mlp_ratio": 4.0, "block_dropout": 0.1, "modality_dropout": 0.0}
    assert head_defaults("late")["weight"] is None
    assert get_head("bottleneck").needs() == ("video_tokens", "audio_tokens")
    assert get_head("layers").needs({"modalities": "audio"}) == ("audio_layers",)
    assert TrainConfig(modalities="video").needs() == ("video",)
    with pytest.raises(ValueError, match="unknown head 'mlp'; choose one of bottleneck, concat"):
        TrainConfig(head="mlp")


@pytest.mark.parametrize("kwargs, message", [
    (dict(head="late", head_options={"weigth": 0.5}), "head late has no option weigth; its options are weight"),
    (dict(head="late", head_options={"weight": 1.5}), r"weight must be a number in \[0, 1\]"),
    (dict(head="gated", transform="sqrt"), "transform sqrt applies to the concat head only"),
    (dict(head="bottleneck", modalities="video"), "head bottleneck fuses both modalities"),
    (dict(head="bottleneck", head_options={"dim": 30, "num_heads": 4}), "dim 30 must be a multiple of num_heads 4"),
    (dict(head="concat", head_options={"dim": 8}), "head concat has no option dim"),
    (dict(modality_dropout=1.0), r"modality_dropout must be in \[0, 1\)"),
    (dict(patience=0), "patience must be a positive"),
])
def test_bad_head_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("name, options", [("concat", {"transform": "learned", "target": "video"}),
                                           ("gated", {}), ("late", {}), ("late", {"weight": 0.25}),
                                           ("bottleneck", TINY_MBT), ("layers", {"modalities": "audio"})])
def test_every_head_maps_a_dict_to_logits_and_rebuilds_from_its_config(splits, name, options):
    train = splits[0]
    cfg = TrainConfig(head=name, **({k: v for k, v in options.items() if k in ("transform", "target", "modalities")}),
                      head_options={k: v for k, v in options.items() if k not in ("transform", "target", "modalities")},
                      hidden=(8,))
    data = HeadInputs(train, cfg.needs())
    torch.manual_seed(0)
    head = create_head(name, data.shapes, NUM_CLASSES, **cfg.head_kwargs()).eval()
    for p in head.parameters():   # zero-initialised parts (gates, classifiers) made non-trivial
        torch.nn.init.normal_(p, std=0.1) if p.ndim else torch.nn.init.constant_(p, 0.3)
    batch = data.batch(torch.arange(7))
    logits = head(batch)
    assert logits.shape == (7, NUM_CLASSES) and torch.isfinite(logits).all()
    rebuilt = head_from_config(head.config)
    rebuilt.load_state_dict(head.state_dict())
    assert torch.equal(rebuilt.eval()(batch), logits)
    assert set(head.input_names()) == set(cfg.needs()) == set(batch)


# -- each head's arithmetic -------------------------------------------------------------------

def test_gated_head_starts_as_the_plain_concatenation_and_learns_its_gates(splits):
    train, val, _ = splits
    torch.manual_seed(0)
    head = create_head("gated", {"video": (DIM,), "audio": (DIM,)}, NUM_CLASSES, hidden=(8,)).eval()
    batch = batch_of(train, ("video", "audio"))
    assert torch.equal(head.gates(batch), torch.ones(7, 2))
    assert torch.equal(head(batch), head.head(torch.cat([batch["video"], batch["audio"]], dim=1)))
    trained = train_head(train, val, TrainConfig(head="gated", **{**FAST, "epochs": 3})).model
    gates = trained.gates(batch_of(train, ("video", "audio"), slice(None)))
    assert gates.std(dim=0).min() > 1e-3   # computed per clip: they differ between clips


@pytest.mark.parametrize("weight", [0.0, 1.0, 0.3])
def test_late_head_mixes_the_two_heads_logits_with_its_weight(weight):
    torch.manual_seed(0)
    head = create_head("late", {"video": (DIM,), "audio": (DIM,)}, NUM_CLASSES, weight=weight, hidden=(8,)).eval()
    video, audio = torch.randn(5, DIM), torch.randn(5, DIM)
    expected = weight * head.video_head(video) + (1 - weight) * head.audio_head(audio)
    assert torch.allclose(head({"video": video, "audio": audio}), expected, atol=1e-6)
    if weight in (0.0, 1.0):
        assert torch.equal(head({"video": video, "audio": audio}), (head.video_head if weight else head.audio_head)(
            video if weight else audio))


def test_late_head_learns_to_trust_the_modality_that_tells_the_classes_apart():
    def video_only(split, n, seed):   # classes 0-2 differ in video only; audio is loud noise
        s = make_split(split, n, seed, classes=range(3))
        s.embeddings["audio"] = np.random.default_rng(seed + 7).normal(0, 5, s.audio.shape).astype(np.float32)
        return s
    cfg = TrainConfig(head="late", **{**FAST, "epochs": 8})
    result = train_head(video_only("train", 240, 0), video_only("val", 60, 1), cfg)
    assert result.model.trained_values()["learned_weight"] > 0.6   # starts at 0.5


def test_layers_head_starts_uniform_and_learns_the_informative_layer(splits):
    train, val, _ = splits
    torch.manual_seed(0)
    head = create_head("layers", {"video_layers": (LAYERS, DIM), "audio_layers": (LAYERS, DIM)}, NUM_CLASSES,
                       hidden=()).eval()
    batch = batch_of(train, ("video_layers", "audio_layers"))
    mean = torch.cat([batch["video_layers"].mean(1), batch["audio_layers"].mean(1)], dim=1)
    assert torch.allclose(head(batch), head.head(mean), atol=1e-5)
    trained = train_head(train, val, TrainConfig(head="layers", **{**FAST, "epochs": 6})).model
    for weights in trained.layer_weights().values():
        assert int(weights.argmax()) == SIGNAL_LAYER and weights[SIGNAL_LAYER] > 1 / LAYERS + 0.1


def naive_block(x, state, prefix, heads):
    """An MBT EncoderBlock written out: pre-LN (eps 1e-6), multi-head attention, residual, pre-LN,
    MLP with the tanh GELU, residual (scenic/projects/mbt/model.py, EncoderBlock)."""
    w = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    def layer_norm(t, name):
        mu, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-6) * w[f"{name}.weight"] + w[f"{name}.bias"]

    b, n, d = x.shape
    qkv = layer_norm(x, "norm1") @ w["attn.qkv.weight"].T + w["attn.qkv.bias"]
    q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in qkv.split(d, dim=-1))
    attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    x = x + (attention @ v).transpose(1, 2).reshape(b, n, d) @ w["attn.proj.weight"].T + w["attn.proj.bias"]
    hidden = layer_norm(x, "norm2") @ w["mlp.fc1.weight"].T + w["mlp.fc1.bias"]
    hidden = 0.5 * hidden * (1 + torch.tanh(math.sqrt(2 / math.pi) * (hidden + 0.044715 * hidden ** 3)))
    return x + hidden @ w["mlp.fc2.weight"].T + w["mlp.fc2.bias"]


def naive_bottleneck_logits(state, tokens, layers, heads):
    """MBT's bottleneck fusion from the state dict: CLS + tokens + positions, per layer each
    modality attends over [its tokens; bottleneck], bottleneck = mean of their updates, shared
    final LayerNorm, CLS through the shared classifier, logits averaged over modalities."""
    x = {}
    for m in ("video", "audio"):
        t = tokens[f"{m}_tokens"]
        projected = t @ state[f"proj.{m}.weight"].T + state[f"proj.{m}.bias"]
        x[m] = torch.cat([state[f"cls.{m}"].expand(len(t), 1, -1), projected], dim=1) + state[f"pos.{m}"]
    shared = state["bottleneck"].expand(len(x["video"]), -1, -1)
    for layer in range(layers):
        updates = []
        for m in x:
            out = naive_block(torch.cat([x[m], shared], dim=1), state, f"blocks.{m}.{layer}.", heads)
            x[m], update = out[:, :x[m].shape[1]], out[:, x[m].shape[1]:]
            updates.append(update)
        shared = sum(updates) / len(updates)
    logits = []
    for m in x:
        cls = x[m][:, 0]
        cls = (cls - cls.mean(-1, keepdim=True)) / torch.sqrt(cls.var(-1, unbiased=False, keepdim=True) + 1e-6)
        cls = cls * state["norm.weight"] + state["norm.bias"]
        logits.append(cls @ state["classifier.weight"].T + state["classifier.bias"])
    return logits


def test_bottleneck_head_is_mbt_arithmetic(splits):
    options = {"dim": 16, "layers": 2, "bottlenecks": 3, "num_heads": 2}
    shapes = {"video_tokens": (TOKENS["video"], DIM), "audio_tokens": (TOKENS["audio"], DIM)}
    torch.manual_seed(0)
    head = create_head("bottleneck", shapes, NUM_CLASSES, **options).eval()
    assert torch.all(head.classifier.weight == 0) and torch.all(head.cls["video"] == 0)   # as MBT initialises
    with torch.no_grad():
        head.classifier.weight.normal_(std=0.3)   # so that the logits are not all zero
    batch = batch_of(splits[0], shapes)
    state = {k: v.detach() for k, v in head.state_dict().items()}
    expected = naive_bottleneck_logits(state, batch, options["layers"], options["num_heads"])
    with torch.no_grad():
        parts = list(head.modality_logits(batch).values())
        assert all(torch.allclose(p, e, atol=1e-5) for p, e in zip(parts, expected))
        assert torch.allclose(head(batch), (expected[0] + expected[1]) / 2, atol=1e-5)
        # Training minimises the mean of the per-modality losses, as MBT's loss_function.
        labels = torch.from_numpy(splits[0].labels[:7])
        loss, _ = head.training_loss(batch, labels)
        assert torch.allclose(loss, (F.cross_entropy(expected[0], labels) + F.cross_entropy(expected[1], labels)) / 2,
                              atol=1e-5)
        # The bottleneck is the only path between modalities: the audio CLS hears the video tokens.
        other = {**batch, "video_tokens": batch["video_tokens"] + 1}
        assert not torch.allclose(head.modality_logits(other)["audio"], parts[1])
        assert torch.equal(head.modality_logits({**batch, "audio_tokens": batch["audio_tokens"]})["video"], parts[0])


def test_bottleneck_head_learns_the_fused_task(splits):
    train, val, test = splits
    cfg = TrainConfig(head="bottleneck", head_options=TINY_MBT, **{**FAST, "epochs": 8})
    result = train_head(train, val, cfg)
    top1 = (split_logits(result.model, test).argmax(1).numpy() == test.labels).mean()
    assert top1 > UNIMODAL_CEILING + 0.1, top1


# -- modality dropout -------------------------------------------------------------------------

def test_modality_dropout_zeroes_exactly_one_modality_of_the_dropped_samples():
    inputs = {"video": torch.ones(4000, 3), "video_tokens": torch.ones(4000, 2, 3), "audio": torch.ones(4000, 5)}
    assert drop_modalities(inputs, 0.0) is inputs
    torch.manual_seed(0)
    out = drop_modalities(inputs, 0.5)
    video_gone = out["video"].sum(1) == 0
    assert torch.equal(video_gone, out["video_tokens"].sum((1, 2)) == 0)   # all of a modality's inputs
    audio_gone = out["audio"].sum(1) == 0
    assert not (video_gone & audio_gone).any()
    assert video_gone.float().mean() == pytest.approx(0.25, abs=0.03)
    assert audio_gone.float().mean() == pytest.approx(0.25, abs=0.03)
    assert torch.equal(inputs["video"], torch.ones(4000, 3))   # the caller's tensors are untouched


def test_modality_dropout_reaches_the_head_while_training_only(splits):
    train, val, _ = splits
    assert train_head(train, val, TrainConfig(modality_dropout=0.4, **{**FAST, "epochs": 1})).model.modality_dropout == 0.4
    torch.manual_seed(0)
    head = create_head("concat", {"video": (DIM,), "audio": (DIM,)}, NUM_CLASSES, hidden=(8,), modality_dropout=0.5)
    seen = []
    head.head.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    data = HeadInputs(train, ("video", "audio"))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(5):
        train_epoch(head, optimizer, data, 32, torch.Generator().manual_seed(0))
    fused = torch.cat(seen)   # what the MLP saw: [video, audio] per training sample
    video_gone, audio_gone = (fused[:, :DIM] == 0).all(1), (fused[:, DIM:] == 0).all(1)
    assert video_gone.float().mean() == pytest.approx(0.25, abs=0.04)
    assert audio_gone.float().mean() == pytest.approx(0.25, abs=0.04)
    assert not (video_gone & audio_gone).any()
    seen.clear()
    predict_logits(head, data)
    shown = torch.cat(seen)
    assert not ((shown[:, :DIM] == 0).all(1) | (shown[:, DIM:] == 0).all(1)).any()   # evaluation sees every modality


# -- views, lazy caches, early stopping -------------------------------------------------------

def exact_views(split: FeatureSplit) -> FeatureSplit:
    """Two views x + d and x - d on a 1/8 grid, so that their float32 mean is x exactly."""
    x = np.round(split.video * 8) / 8
    d = np.round(np.random.default_rng(3).normal(0, 1, x.shape) * 8) / 8
    pooled = FeatureSplit(split.split, split.clip_ids, split.labels, x, split.audio, label_names=split.label_names,
                          backbones=split.backbones, preprocessing=split.preprocessing)
    views = FeatureSplit(split.split, split.clip_ids, split.labels, np.stack([x + d, x - d], axis=1), split.audio,
                         label_names=split.label_names, backbones=split.backbones, preprocessing=split.preprocessing,
                         embedding_info={"video": {"views": 2}})
    return pooled, views


def test_views_are_averaged_for_training_and_their_softmax_averaged_for_evaluation():
    (train, train_views), (val, val_views) = exact_views(make_split("train", 120, 0)), exact_views(make_split("val", 30, 1))
    cfg = TrainConfig(**{**FAST, "epochs": 2})
    pooled = train_head(train, None, cfg)
    viewed = train_head(train_views, None, cfg)
    assert pooled.history == viewed.history   # trained on the mean of the views: the pooled inputs
    head = viewed.model
    scores = split_logits(head, val_views)
    with torch.no_grad():
        video = torch.from_numpy(val_views.video)
        audio = torch.from_numpy(val_views.audio)
        per_view = [torch.softmax(head({"video": video[:, v], "audio": audio}), dim=1) for v in range(2)]
    assert torch.allclose(torch.softmax(scores, dim=1), (per_view[0] + per_view[1]) / 2, atol=1e-6)
    # Not the head on the mean of the views:
    assert not torch.allclose(torch.softmax(scores, dim=1), torch.softmax(split_logits(head, val), dim=1), atol=1e-3)
    bad = FeatureSplit("val", val.clip_ids, val.labels, val_views.video, val.audio, label_names=val.label_names,
                       embedding_info={"video": {"views": 3}})
    with pytest.raises(CacheError, match="says it has 3 views but its shape is"):
        split_logits(head, bad)


def test_lazily_read_float16_tokens_train_to_the_numbers_of_the_same_cache_in_memory(splits, tmp_path):
    for split in splits[:2]:
        write_split(tmp_path / f"{split.split}.h5", split)
    eager = [read_split(tmp_path / f"{n}.h5", lazy=False) for n in ("train", "val")]
    lazy = [read_split(tmp_path / f"{n}.h5", lazy=True) for n in ("train", "val")]
    assert type(lazy[0].embeddings["video_tokens"]).__name__ == "LazyArray"
    assert eager[0].embeddings["video_tokens"].dtype == np.float16
    cfg = TrainConfig(head="bottleneck", head_options=TINY_MBT, **{**FAST, "epochs": 2})
    a, b = train_head(*eager, cfg), train_head(*lazy, cfg)
    assert a.history == b.history
    assert all(torch.equal(a.last_state_dict[k], b.last_state_dict[k]) for k in a.last_state_dict)


def test_early_stopping_stops_patience_epochs_after_the_best_and_reports_the_best(splits):
    train, val, _ = splits
    cfg = TrainConfig(**{**FAST, "epochs": 40, "lr": 3e-2, "modalities": "video"}, patience=2)
    result = train_head(train, val, cfg)
    assert len(result.history) < cfg.epochs
    assert len(result.history) == result.best_epoch + 2
    ranks = [(r["val_top1"], -r["val_loss"]) for r in result.history]
    assert ranks[result.best_epoch - 1] == max(ranks)
    with pytest.raises(ValueError, match="patience=2 stops on the val score"):
        train_head(train, None, cfg)


# -- run directories for every head -----------------------------------------------------------

def test_a_run_of_any_head_saves_loads_and_evaluates(splits, tmp_path):
    train, val, test = splits
    cfg = TrainConfig(head="late", head_options={"weight": None}, **{**FAST, "epochs": 3})
    metrics = fuse_run(train, val, test, cfg, tmp_path / "run")
    head, meta = load_run(tmp_path / "run")
    assert head.name == "late" and meta["needs"] == ["video", "audio"]
    assert metrics["trained"]["learned_weight"] == head.trained_values()["learned_weight"] != 0.5
    assert evaluate_run(tmp_path / "run", test)["top1"] == metrics["test"]["top1"]
    with open(tmp_path / "run" / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["train_top5"]) >= float(r["train_top1"]) for r in rows] == [True] * 3
    assert metrics["learnable"]["test"] == {"clips": 60, "seen_label_clips": 60, "max_top1": 1.0, "masked_classes": 0}


def test_a_cache_without_the_heads_embeddings_is_refused_naming_the_extraction_flag(tmp_path):
    train, val = make_split("train", 30, 0), make_split("val", 12, 1)
    with pytest.raises(CacheError, match=r"no video_tokens, audio_tokens embedding, which the bottleneck head "
                                         r"reads .*extract with --tokens"):
        fuse_run(train, val, None, TrainConfig(head="bottleneck"), tmp_path / "run")
    with pytest.raises(CacheError, match="extract with --layers all to add audio_layers"):
        fuse_run(train, val, None, TrainConfig(head="layers", modalities="audio"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_learnable_ceiling_counts_test_clips_whose_label_was_seen(tmp_path):
    train = make_split("train", 100, 0, classes=range(4))
    test = make_split("test", 60, 2)
    metrics = fuse_run(train, None, test, TrainConfig(**{**FAST, "epochs": 1}), tmp_path / "run")
    seen = int(np.isin(test.labels, [0, 1, 2, 3]).sum())
    assert metrics["learnable"]["test"] == {"clips": 60, "seen_label_clips": seen, "max_top1": seen / 60,
                                            "masked_classes": 2}
    assert metrics["test"]["top1"] <= seen / 60 and metrics["test"]["top5"] <= seen / 60


# -- a cache's own classifier outputs ---------------------------------------------------------

def test_backbone_logits_are_scored_by_the_mean_per_view_softmax_in_the_backbones_label_space():
    rng = np.random.default_rng(0)
    backbone_names = [f"bb_{i}" for i in range(9)] + NAMES[::-1]   # a superset, in another order
    n, views = 40, 4
    labels = rng.integers(0, NUM_CLASSES, n)
    logits = rng.normal(0, 2, (n, views, len(backbone_names))).astype(np.float32)
    info = {"logits": {"views": views, "label_space": "backbone", "label_names": backbone_names}}
    split = FeatureSplit("test", [f"c{i}" for i in range(n)], labels, rng.normal(size=(n, 4)), rng.normal(size=(n, 4)),
                         label_names=NAMES, embeddings={"logits": logits}, embedding_info=info)
    result = evaluate_backbone_logits(split)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    guess = probs.mean(axis=1).argmax(axis=1)
    truth = np.array([backbone_names.index(NAMES[y]) for y in labels])
    assert result["top1"] == pytest.approx(np.mean(guess == truth), abs=1e-12)
    assert result["views"] == views and result["label_space"] == "backbone"
    info["logits"]["label_names"] = [*backbone_names[:-1], "something else"]
    renamed = FeatureSplit("test", split.clip_ids, labels, split.video, split.audio, label_names=NAMES,
                           embeddings={"logits": logits}, embedding_info=info)
    with pytest.raises(CacheError, match="1 of the cache's 6 class names are not the backbone's"):
        evaluate_backbone_logits(renamed)
    with pytest.raises(CacheError, match="no 'joint' embedding"):
        evaluate_backbone_logits(split, "joint")


def test_predict_logits_keeps_the_old_two_tensor_call(splits):
    train = splits[0]
    torch.manual_seed(0)
    head = create_head("concat", {"video": (DIM,), "audio": (DIM,)}, NUM_CLASSES).eval()
    video, audio = torch.from_numpy(train.video), torch.from_numpy(train.audio)
    assert torch.equal(predict_logits(head, video, audio), predict_logits(head, HeadInputs(train, ("video", "audio"))))
    with single_thread(), torch.no_grad():   # predict_logits computes on one thread: the same arithmetic
        assert torch.equal(predict_logits(head, video, audio), head(video, audio))
