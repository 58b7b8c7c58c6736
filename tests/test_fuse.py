"""fuse/: transforms, head, training, metrics, run directories, on synthetic cached features.

The synthetic dataset has 6 classes: classes 0-2 differ only in their video embedding (their
audio is the same noise), classes 3-5 only in audio. A video-only head can tell apart
{0}, {1}, {2} and {3,4,5} (expected top-1 at most 1/2 + 1/2 * 1/3 = 2/3), an audio-only head
likewise, and only the fused head can get every class.
"""
import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import top_k_accuracy_score

import alphafuse.fuse as fuse
from alphafuse.cache import CacheError, FeatureSplit, write_split
from alphafuse.fuse import (DEFAULT_ALPHA, AlphaFuseHead, FusionHead, ScaledConcat, TrainConfig, apply_transform,
                  evaluate_run, fuse_run, load_run, load_splits, predict_logits, score, select_best_epoch,
                  train_head, validate_transform)
from tests.inprocess import run_cli

NUM_CLASSES = 6
DIM = 16
NAMES = [f"class_{c}" for c in range(NUM_CLASSES)]
BACKBONES = {"video": {"fingerprint": "tsf-tiny-1", "config": {"dim": DIM}},
             "audio": {"fingerprint": "ast-tiny-1", "config": {"dim": DIM}}}
PREPROCESSING = {"frames": 8, "fbank_bins": 128}
# Small and fast, yet enough to learn the synthetic task well.
FAST = dict(hidden=(32,), epochs=12, batch_size=32, lr=3e-3, dropout=0.1)
# Largest expected top-1 of a head that sees one modality only (see the module docstring).
UNIMODAL_CEILING = 0.5 + 0.5 / 3


def make_split(split, n, seed, *, classes=range(NUM_CLASSES), backbones=BACKBONES, names=NAMES):
    """Balanced clusters: class means drawn once (fixed seed), clip noise drawn per split."""
    means = np.random.default_rng(1234)
    video_means = means.normal(0, 1.5, (NUM_CLASSES, DIM))
    audio_means = means.normal(0, 1.5, (NUM_CLASSES, DIM))
    half = NUM_CLASSES // 2
    video_means[half:] = 0   # classes 3-5: no video cue
    audio_means[:half] = 0   # classes 0-2: no audio cue
    classes = list(classes)
    labels = np.array([classes[i % len(classes)] for i in range(n)])
    rng = np.random.default_rng(seed)
    return FeatureSplit(
        split=split, clip_ids=[f"{split}_{i:04d}" for i in range(n)], labels=labels,
        video=video_means[labels] + rng.normal(0, 1, (n, DIM)),
        audio=audio_means[labels] + rng.normal(0, 1, (n, DIM)),
        has_audio=np.ones(n, bool), label_names=list(names), backbones=backbones,
        preprocessing=PREPROCESSING)


@pytest.fixture(scope="module")
def splits():
    return make_split("train", 300, 0), make_split("val", 120, 1), make_split("test", 120, 2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, splits):
    train, val, test = splits
    out = tmp_path_factory.mktemp("runs") / "run"
    metrics = fuse_run(train, val, test, TrainConfig(**FAST), out)
    return out, metrics


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- transforms -------------------------------------------------------------------------------

def test_sqrt_is_sqrt_of_relu_on_negative_entries():
    x = torch.tensor([[-4.0, -0.5, 0.0, 0.25, 9.0]])
    expected = [[math.sqrt(max(v, 0.0)) for v in row] for row in x.tolist()]
    assert apply_transform(x, "sqrt", None).tolist() == expected
    assert apply_transform(x.numpy(), "sqrt", None).tolist() == expected


@pytest.mark.parametrize("name", ["pos_scalar", "neg_scalar"])
def test_scalar_transforms_multiply_by_their_default_alpha(name):
    alpha = validate_transform(name)
    assert alpha == DEFAULT_ALPHA[name]   # no alpha given: the default is filled in
    x = torch.randn(3, 5)
    assert torch.equal(apply_transform(x, name, alpha), x * alpha)


def test_none_is_identity_and_explicit_alpha_is_kept():
    x = torch.randn(2, 4)
    assert apply_transform(x, "none", validate_transform("none")) is x
    assert validate_transform("pos_scalar", 2) == 2.0
    assert validate_transform("scale", 0.3) == 0.3


@pytest.mark.parametrize("name, alpha, message", [
    ("pos_scalar", 0.5, "pos_scalar needs alpha > 1, got 0.5"),
    ("pos_scalar", 1.0, "alpha > 1"),
    ("neg_scalar", 1.5, "neg_scalar needs 0 < alpha < 1, got 1.5"),
    ("neg_scalar", 0.0, "0 < alpha < 1"),
    ("scale", -2.0, "scale needs alpha > 0"),
    ("scale", None, "needs an explicit alpha"),
    ("sqrt", 2.0, "takes no alpha"),
    ("cube", None, "unknown transform 'cube'"),
])
def test_alpha_outside_range_is_a_clear_error(name, alpha, message):
    with pytest.raises(ValueError, match=message):
        validate_transform(name, alpha)
    with pytest.raises(ValueError, match=message):
        TrainConfig(transform=name, alpha=alpha)


@pytest.mark.parametrize("target, transformed", [("timesformer", "video"), ("video", "video"),
                                                 ("ast", "audio"), ("audio", "audio")])
def test_scaled_concat_transforms_only_the_target_half(target, transformed):
    video, audio = torch.randn(4, 3), torch.randn(4, 5)
    fused = ScaledConcat("pos_scalar", target, 2.0)(video, audio)
    assert fused.shape == (4, 8)
    assert torch.equal(fused[:, :3], video * 2 if transformed == "video" else video)
    assert torch.equal(fused[:, 3:], audio * 2 if transformed == "audio" else audio)


def test_scaled_concat_unimodal_keeps_one_modality():
    video, audio = torch.randn(4, 3), torch.randn(4, 5)
    assert torch.equal(ScaledConcat(modalities="video")(video, audio), video)
    assert torch.equal(ScaledConcat(modalities="audio")(video, audio), audio)
    assert torch.equal(ScaledConcat("sqrt", "video", modalities="video")(video, audio), torch.sqrt(torch.relu(video)))
    with pytest.raises(ValueError, match="leaves out"):
        ScaledConcat("sqrt", "audio", modalities="video")
    with pytest.raises(ValueError, match="unknown modalities"):
        ScaledConcat(modalities="both_and_more")


# -- head -------------------------------------------------------------------------------------

def test_fusion_head_is_the_papers_stack():
    head = FusionHead(1536, 309)
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1536, 1024), (1024, 512), (512, 309)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in head) == 2
    assert [m.p for m in head if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    expected_params = (1536 + 1) * 1024 + (1024 + 1) * 512 + (512 + 1) * 309
    assert sum(p.numel() for p in head.parameters()) == expected_params
    assert len(FusionHead(10, 3, hidden=())) == 1  # a linear probe


@pytest.mark.parametrize("modalities, in_dim", [("both", 768 + 768), ("video", 768), ("audio", 768)])
def test_alphafuse_head_shapes_and_config_round_trip(modalities, in_dim):
    head = AlphaFuseHead(768, 768, 10, modalities=modalities, hidden=(64, 32))
    assert head.head[0].in_features == in_dim
    video, audio = torch.randn(5, 768), torch.randn(5, 768)
    rebuilt = AlphaFuseHead.from_config(head.config)
    rebuilt.load_state_dict(head.state_dict())
    head.eval(), rebuilt.eval()
    assert head(video, audio).shape == (5, 10)
    assert torch.equal(head(video, audio), rebuilt(video, audio))


# -- training ---------------------------------------------------------------------------------

def test_training_learns_and_unimodal_heads_fall_below_fused(splits):
    train, val, test = splits
    top1 = {}
    for modalities in ("both", "video", "audio"):
        result = train_head(train, val, TrainConfig(modalities=modalities, **FAST))
        logits = result.model(torch.from_numpy(test.video), torch.from_numpy(test.audio))
        top1[modalities] = score(logits, test.labels, NUM_CLASSES)["top1"]
    chance = 1 / NUM_CLASSES
    assert top1["both"] > UNIMODAL_CEILING + 0.2 > chance + 0.5
    for modalities in ("video", "audio"):
        assert chance + 0.2 < top1[modalities] < UNIMODAL_CEILING + 0.1, top1
        assert top1[modalities] < top1["both"] - 0.15, top1


def test_same_seed_is_bit_identical_other_seed_differs_and_global_rng_is_untouched(splits):
    train, val, _ = splits
    cfg = TrainConfig(**{**FAST, "epochs": 3})
    rng_before = torch.get_rng_state()
    a, b = train_head(train, val, cfg), train_head(train, val, cfg)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert a.history == b.history
    assert state_equal(a.best_state_dict, b.best_state_dict)
    assert state_equal(a.last_state_dict, b.last_state_dict)
    c = train_head(train, val, replace(cfg, seed=1))
    assert c.history != a.history
    assert not state_equal(c.last_state_dict, a.last_state_dict)


def test_select_best_epoch_breaks_ties_by_loss_then_earliest():
    history = [
        {"epoch": 1, "val_top1": 0.5, "val_loss": 1.0},
        {"epoch": 2, "val_top1": 0.8, "val_loss": 0.9},
        {"epoch": 3, "val_top1": 0.8, "val_loss": 0.7},   # same top-1 as 2, lower loss
        {"epoch": 4, "val_top1": 0.8, "val_loss": 0.7},   # exact tie with 3: the earlier wins
        {"epoch": 5, "val_top1": 0.6, "val_loss": 0.1},   # lowest loss, but lower top-1
    ]
    assert select_best_epoch(history) == 3
    assert select_best_epoch(history[:2]) == 2
    assert select_best_epoch([{"epoch": e, "train_loss": 1.0} for e in (1, 2, 3)]) == 3


def test_reported_model_is_the_best_epoch_and_last_is_kept(splits):
    train, val, _ = splits
    # Video only (val top-1 well below 1) and a high learning rate: val accuracy moves around.
    result = train_head(train, val, TrainConfig(**{**FAST, "epochs": 8, "lr": 3e-2, "modalities": "video"}))
    assert len({row["val_top1"] for row in result.history}) > 1
    assert result.best_epoch == select_best_epoch(result.history)
    video, audio = torch.from_numpy(val.video), torch.from_numpy(val.audio)
    # predict_logits is the very computation of the per-epoch validation (one thread): exact.
    best_scores = score(predict_logits(result.model, video, audio), val.labels, NUM_CLASSES)
    last_scores = score(predict_logits(result.last_model(), video, audio), val.labels, NUM_CLASSES)
    best_row, last_row = result.history[result.best_epoch - 1], result.history[-1]
    assert best_scores["top1"] == best_row["val_top1"]
    assert best_scores["loss"] == pytest.approx(best_row["val_loss"], rel=1e-4, abs=1e-6)
    assert last_scores["loss"] == pytest.approx(last_row["val_loss"], rel=1e-4, abs=1e-6)
    assert not result.model.training


def test_without_val_the_last_epoch_is_reported(splits):
    train, _, _ = splits
    result = train_head(train, None, TrainConfig(**{**FAST, "epochs": 2}))
    assert result.best_epoch == 2
    assert state_equal(result.best_state_dict, result.last_state_dict)
    assert [set(row) for row in result.history] == [{"epoch", "train_loss", "train_top1", "train_top5"}] * 2


def test_train_config_validates_and_normalises():
    cfg = TrainConfig(transform="pos_scalar", target="timesformer")
    assert (cfg.target, cfg.alpha) == ("video", DEFAULT_ALPHA["pos_scalar"])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig(seed=np.int64(3), hidden=[np.int64(8)]).to_dict() == {**TrainConfig().to_dict(),
                                                                            "seed": 3, "hidden": [8]}
    for bad, message in [({"epochs": 0}, "epochs"), ({"batch_size": 2.5}, "batch_size"),
                         ({"dropout": 1.0}, "dropout"), ({"lr": -1.0}, "lr"),
                         ({"modalities": "smell"}, "modalities"), ({"target": "lidar"}, "target"),
                         ({"hidden": (0,)}, "hidden")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="unknown training option.*epoch_count"):
        TrainConfig.from_dict({"epoch_count": 3})


def test_empty_val_split_is_refused(splits):
    train, val, _ = splits
    empty = FeatureSplit("val", [], [], np.zeros((0, DIM)), np.zeros((0, DIM)), [], NAMES,
                         backbones=BACKBONES, preprocessing=PREPROCESSING)
    with pytest.raises(ValueError, match="no clips"):
        train_head(train, empty, TrainConfig(**FAST))


# -- metrics ----------------------------------------------------------------------------------

def average_precision_by_hand(relevant, scores):
    """Mean of precision at the rank of each relevant item, scores without ties."""
    order = np.argsort(-np.asarray(scores))
    hits, precisions = 0, []
    for rank, i in enumerate(order, start=1):
        if relevant[i]:
            hits += 1
            precisions.append(hits / rank)
    return sum(precisions) / len(precisions)


def test_score_small_hand_case():
    probs = np.array([
        [0.7, 0.2, 0.1, 0.0],   # true 0: right
        [0.1, 0.3, 0.6, 0.0],   # true 1: wrong (2), but 2nd
        [0.2, 0.1, 0.6, 0.1],   # true 2: right
        [0.5, 0.4, 0.05, 0.05],  # true 1: wrong (0), 2nd
        [0.25, 0.35, 0.3, 0.1],  # true 0: wrong, 3rd
    ])
    labels = np.array([0, 1, 2, 1, 0])
    result = score(probs, labels, 4, probs=True, label_names=list("abcd"))
    assert result["top1"] == 2 / 5
    assert result["top5"] == 1.0  # k = min(5, 4) = 4: every class is in the top 4
    assert result["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.6, 0.4, 0.25])))
    # Class d never occurs: it has no AP and is left out of the mean.
    aps = [average_precision_by_hand(labels == c, probs[:, c]) for c in range(3)]
    assert result["map"] == pytest.approx(np.mean(aps))
    assert result["map_classes"] == 3
    assert result["per_class"]["a"] == {"support": 2, "top1": 0.5, "ap": pytest.approx(aps[0])}
    assert result["per_class"]["b"]["top1"] == 0.0
    assert result["per_class"]["d"] == {"support": 0, "top1": None, "ap": None}


def test_score_top5_and_loss_from_logits():
    logits = np.array([[7.0, 6, 5, 4, 3, 2, 1],    # true class 5 is 6th: outside the top 5
                       [1.0, 2, 3, 4, 5, 6, 7],    # true class 2 is 5th: inside
                       [0.0, 0, 0, 0, 0, 0, 9]])   # true class 6 is 1st
    labels = np.array([5, 2, 6])
    result = score(torch.tensor(logits), labels, 7)
    assert result["top5"] == 2 / 3
    assert result["top1"] == 1 / 3
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert result["loss"] == pytest.approx(-log_softmax[np.arange(3), labels].mean())


def test_score_topk_matches_sklearn():
    rng = np.random.default_rng(0)
    scores_ = rng.normal(size=(200, 9))
    labels = rng.integers(0, 9, 200)
    result = score(scores_, labels, 9)
    assert result["top1"] == pytest.approx(top_k_accuracy_score(labels, scores_, k=1, labels=range(9)))
    assert result["top5"] == pytest.approx(top_k_accuracy_score(labels, scores_, k=5, labels=range(9)))


def test_score_ties_rank_the_lower_class_first_like_argmax():
    labels = np.array([0, 3, 4, 5, 8, 8])
    result = score(np.zeros((6, 9)), labels, 9)   # an untrained head: all classes tie
    assert result["top1"] == np.mean(labels == 0)
    assert result["top5"] == np.mean(labels < 5)


def test_score_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        score(np.zeros((3, 4)), np.zeros(3, int), 5)
    with pytest.raises(ValueError, match="empty"):
        score(np.zeros((0, 4)), np.zeros(0, int), 4)


# -- runs -------------------------------------------------------------------------------------

def test_run_dir_contents(run_dir):
    out, metrics = run_dir
    for name in ("head.pt", "metrics.json", "history.csv", "learning_curves.png", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp"))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["best_epoch"] == metrics["best_epoch"]
    for split in ("val", "test"):
        for block in (saved[split], saved["last"][split]):
            assert {"top1", "top5", "map", "loss", "per_class"} <= set(block)
            assert set(block["per_class"]) == set(NAMES)
    assert saved["config"]["epochs"] == FAST["epochs"]
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == FAST["epochs"]
    assert list(rows[0]) == ["epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5"]
    assert [int(r["epoch"]) for r in rows] == list(range(1, FAST["epochs"] + 1))
    for png in ("learning_curves.png", "confusion_matrix.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and min(image.size) > 100
            image.verify()


def test_load_run_round_trip_gives_identical_logits(run_dir, splits):
    out, metrics = run_dir
    train, val, test = splits
    model, meta = load_run(out)
    assert meta["label_names"] == NAMES and meta["backbones"] == BACKBONES
    assert meta["preprocessing"] == PREPROCESSING and meta["best_epoch"] == metrics["best_epoch"]
    # Training is deterministic, so retraining gives the very head that was saved.
    retrained = train_head(train, val, TrainConfig.from_dict(meta["train_config"])).model
    video, audio = torch.from_numpy(test.video), torch.from_numpy(test.audio)
    with torch.no_grad():
        assert torch.equal(model(video, audio), retrained(video, audio))
    assert evaluate_run(out, test) == {**metrics["test"], "unseen_in_train": [], "masked_in_prediction": []}
    assert evaluate_run(out, test, which="last")["top1"] == metrics["last"]["test"]["top1"]


def test_evaluate_run_writes_predictions_csv(run_dir, splits, tmp_path):
    out, _ = run_dir
    test = splits[2]
    path = tmp_path / "predictions.csv"
    metrics = evaluate_run(out, test, predictions_path=path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["clip_id", "label", "predicted", *NAMES]
    body = rows[1:]
    assert [r[0] for r in body] == test.clip_ids
    assert [r[1] for r in body] == [NAMES[y] for y in test.labels]
    probs = np.array([[float(p) for p in r[3:]] for r in body])
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert [r[2] for r in body] == [NAMES[i] for i in probs.argmax(axis=1)]
    assert np.mean([r[1] == r[2] for r in body]) == metrics["top1"]


def test_run_without_val_reports_the_last_epoch(splits, tmp_path):
    train, _, test = splits
    metrics = fuse_run(train, None, test, TrainConfig(**{**FAST, "epochs": 2}), tmp_path / "run")
    assert metrics["best_epoch"] == 2 and metrics["val"] is None
    assert metrics["test"]["top1"] == metrics["last"]["test"]["top1"]
    with open(tmp_path / "run" / "history.csv", newline="") as f:
        assert [r["val_top1"] for r in csv.DictReader(f)] == ["", ""]


def test_mismatched_backbones_or_labels_are_refused_before_training(splits, tmp_path):
    train, val, test = splits
    other_video = {**BACKBONES, "video": {**BACKBONES["video"], "fingerprint": "tsf-base-2"}}
    with pytest.raises(CacheError, match="backbones: video.fingerprint"):
        fuse_run(train, make_split("val", 30, 5, backbones=other_video), test, TrainConfig(**FAST), tmp_path / "a")
    renamed = [*NAMES[:-1], "something_else"]
    with pytest.raises(CacheError, match="label_names"):
        fuse_run(train, val, make_split("test", 30, 5, names=renamed), TrainConfig(**FAST), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_evaluate_run_refuses_a_split_from_other_backbones(run_dir):
    out, _ = run_dir
    other_audio = {**BACKBONES, "audio": {**BACKBONES["audio"], "fingerprint": "ast-base-9"}}
    with pytest.raises(CacheError, match="cannot evaluate run .*audio.fingerprint"):
        evaluate_run(out, make_split("test", 30, 5, backbones=other_audio))


def test_test_label_unseen_in_training_is_reported(splits, tmp_path):
    _, val, test = splits
    train = make_split("train", 150, 7, classes=range(NUM_CLASSES - 1))
    metrics = fuse_run(train, val, test, TrainConfig(**{**FAST, "epochs": 2}), tmp_path / "run")
    assert metrics["unseen_in_train"] == {"val": [NAMES[-1]], "test": [NAMES[-1]]}
    assert metrics["test"]["per_class"][NAMES[-1]]["support"] == int((test.labels == NUM_CLASSES - 1).sum())
    assert math.isfinite(metrics["test"]["map"])
    assert evaluate_run(tmp_path / "run", test)["unseen_in_train"] == [NAMES[-1]]


def test_existing_run_is_refused_and_an_interrupted_overwrite_leaves_nothing_stale(splits, tmp_path, monkeypatch):
    train, val, test = splits
    cfg = TrainConfig(**{**FAST, "epochs": 1})
    out = tmp_path / "run"
    fuse_run(train, val, test, cfg, out)
    with pytest.raises(FileExistsError, match="already holds a run"):
        fuse_run(train, val, test, cfg, out)
    assert (out / "metrics.json").is_file()   # the refused run touched nothing

    def interrupted_save(obj, f):
        f.write(b"half a head")
        raise KeyboardInterrupt

    monkeypatch.setattr(fuse.run.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        fuse_run(train, val, test, replace(cfg, seed=3), out, overwrite=True)
    # The old run's files were removed before the new one was written; the half-written head
    # never reached its real name, and nothing says the run finished.
    assert sorted(p.name for p in out.iterdir()) == [".alphafuse.json", ".alphafuse.lock"]   # its lock and marker
    with pytest.raises(FileNotFoundError, match="head.pt not found"):
        load_run(out)


def test_overwrite_removes_the_previous_runs_plots(splits, tmp_path):
    train, val, test = splits
    cfg = TrainConfig(**{**FAST, "epochs": 1})
    out = tmp_path / "run"
    fuse_run(train, val, test, cfg, out)
    assert (out / "confusion_matrix.png").is_file()
    stray = out / "notes.txt"   # not a run file: left alone
    stray.write_text("mine")
    fuse_run(train, None, None, cfg, out, overwrite=True)   # no held-out split: no confusion matrix
    assert sorted(p.name for p in out.iterdir()) == [".alphafuse.json", ".alphafuse.lock", "config.json", "head.pt",
                                                     "history.csv", "learning_curves.png", "metrics.json", "notes.txt"]
    assert json.loads((out / "metrics.json").read_text())["test"] is None


def test_training_that_fails_on_bad_input_creates_no_run_dir(splits, tmp_path):
    train, _, test = splits
    empty = FeatureSplit("val", [], [], np.zeros((0, DIM)), np.zeros((0, DIM)), [], NAMES,
                         backbones=BACKBONES, preprocessing=PREPROCESSING)
    with pytest.raises(ValueError, match="no clips"):
        fuse_run(train, empty, test, TrainConfig(**FAST), tmp_path / "nested" / "run")
    assert not (tmp_path / "nested").exists()


def test_load_splits_reads_a_cache_dir(splits, tmp_path):
    for split in splits:
        write_split(tmp_path / f"{split.split}.h5", split)
    loaded = load_splits(tmp_path)
    assert list(loaded) == ["train", "val", "test"]
    np.testing.assert_array_equal(loaded["val"].audio, splits[1].audio.astype(np.float32))
    with pytest.raises(CacheError, match="no such cache file"):
        load_splits(tmp_path, ["holdout"])


def test_confusion_matrix_with_many_classes_draws_only_present_ones(tmp_path):
    names = [f"a_rather_long_class_name_{i}" for i in range(300)]
    rng = np.random.default_rng(0)
    labels = rng.choice(100, 400)
    predicted = np.where(rng.random(400) < 0.6, labels, rng.choice(100, 400))
    fuse.confusion_matrix_plot(labels, predicted, names, tmp_path / "cm.png", title="test")
    with Image.open(tmp_path / "cm.png") as image:
        assert image.format == "PNG"
        image.verify()


def test_no_reported_score_exceeds_its_ceiling_when_every_test_label_is_unseen(tmp_path):
    """Train on classes 0-2, test on 3-5 only: the learnable ceiling is 0, and so must be every
    top-1 and top-5 fuse, evaluate and the predictions CSV report. A nearly untrained head (lr
    1e-6) ranks its untrained classes first about half the time, so without the mask the test
    top-1 is well above 0 (checked first: the test would catch the bound broken)."""
    from alphafuse.fuse.evaluation import split_logits

    train = make_split("train", 90, 0, classes=range(3))
    val, test = make_split("val", 30, 1, classes=range(3, 6)), make_split("test", 60, 2, classes=range(3, 6))
    cfg = TrainConfig(**{**FAST, "epochs": 1, "lr": 1e-6})
    metrics = fuse_run(train, val, test, cfg, tmp_path / "run")
    head, _ = load_run(tmp_path / "run")
    raw = split_logits(head, test).argmax(1).numpy()
    assert (raw == test.labels).mean() > 0.05   # chance hits the mask must remove
    assert metrics["learnable"]["test"] == {"clips": 60, "seen_label_clips": 0, "max_top1": 0.0, "masked_classes": 3}
    assert metrics["masked_in_prediction"] == NAMES[3:]
    for which in (metrics, metrics["last"]):
        for name in ("val", "test"):
            assert which[name]["top1"] == 0.0 and which[name]["top5"] == 0.0
            assert which[name]["masked_classes"] == 3
            assert all(which[name]["per_class"][n]["ap"] == 0.0 for n in NAMES[3:])
            assert math.isfinite(which[name]["loss"])
    assert set(metrics["missing_modality"]["test"].values()) == {0.0}
    again = evaluate_run(tmp_path / "run", test, tmp_path / "pred.csv")
    assert again["top1"] == again["top5"] == 0.0 and again["masked_in_prediction"] == NAMES[3:]
    with open(tmp_path / "pred.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["predicted"] for r in rows} <= set(NAMES[:3])
    assert all(float(r[n]) == 0.0 for r in rows for n in NAMES[3:])


def test_masking_keeps_top5_honest_with_fewer_allowed_classes_than_five():
    """Two allowed classes of six: a top-5 over masked logits must not count the -inf tail."""
    logits = np.array([[0.0, 1.0, 9.0, 8.0, 7.0, 6.0], [2.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    allowed = np.array([True, True, False, False, False, False])
    out = score(logits, np.array([3, 1]), 6, allowed=allowed)
    assert out["top1"] == 0.0   # clip 0 predicts class 1, clip 1 class 0
    assert out["top5"] == 0.5   # clip 1's label (1) is in its two allowed guesses; clip 0's (3) never
    assert out["loss"] == pytest.approx(score(logits, np.array([3, 1]), 6)["loss"])   # the unmasked objective
    with pytest.raises(ValueError, match="no class is allowed"):
        score(logits, np.array([3, 1]), 6, allowed=np.zeros(6, bool))


def test_the_best_epoch_is_chosen_on_the_masked_val_score_that_is_reported(tmp_path):
    """history.csv's val top-1 at the best epoch is the val top-1 metrics.json reports: the
    per-epoch validation masks the classes absent from train as the final scores do."""
    train = make_split("train", 120, 0, classes=range(4))
    val, test = make_split("val", 60, 1), make_split("test", 60, 2)
    metrics = fuse_run(train, val, test, TrainConfig(**{**FAST, "epochs": 4, "lr": 1e-4}), tmp_path / "run")
    with open(tmp_path / "run" / "history.csv", newline="") as f:
        rows = {int(r["epoch"]): r for r in csv.DictReader(f)}
    best = rows[metrics["best_epoch"]]
    assert float(best["val_top1"]) == pytest.approx(metrics["val"]["top1"], abs=1e-9)
    assert float(best["val_top5"]) == pytest.approx(metrics["val"]["top5"], abs=1e-9)
    assert all(float(r["val_top1"]) <= metrics["learnable"]["val"]["max_top1"] for r in rows.values())


# -- choosing encoders by name in a folder of stores -----------------------------------------------

def _cli_in_process(args):
    """The console entry point in this process: exit code, stdout and stderr."""
    return run_cli(*args, traceback_ok=True)


def test_fuse_chooses_stores_by_name_and_refuses_an_ambiguous_folder(tmp_path, monkeypatch):
    from tests.stores import write_stores

    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    for split in (make_split("train", 60, 0), make_split("val", 30, 1), make_split("test", 30, 2)):
        folders = write_stores(cache, split, {"video": "timesformer", "audio": "ast"})
        write_stores(cache, split, {"audio": "cavmae"}, prefix={"audio": {"audio": np.asarray(split.audio)[:, :8]}})
    code, _, err = _cli_in_process(["fuse", "--cache-dir", cache, "--epochs", "1", "--out", tmp_path / "r"])
    assert code == 1 and err.strip() == f"Error: two audio encoders in {cache}/: ast, cavmae; pass --audio-backbone"
    assert not (tmp_path / "r").exists()
    code, out, err = _cli_in_process(["fuse", "--cache-dir", cache, "--audio-backbone", "cavmae", "--epochs", "1",
                                      "--hidden", "8", "--out", tmp_path / "r"])
    assert code == 0, err
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["stores"]["video"] == folders["video"].name and config["stores"]["audio"].startswith("cavmae-")
    _, meta = fuse.load_run(tmp_path / "r")
    assert meta["embedding_shapes"]["audio"] == [8]
    code, out, err = _cli_in_process(["cache", "info", cache])
    assert code == 0, err
    assert out.count("\n      train: 60 clips") == 3 and folders["audio"].name in out and "cavmae-" in out
    code, out, err = _cli_in_process(["evaluate", "--run", tmp_path / "r", "--split", "test", "--json"])
    assert code == 0, err
    assert json.loads(out)["num_clips"] == 30
