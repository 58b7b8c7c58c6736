"""fuse/grid.py and fuse/stats.py: configuration lists, running a grid both ways, intervals.

The synthetic cache is tests/test_fuse.py's (6 classes, 3 told apart by video, 3 by audio),
with small heads so that a whole preset trains in seconds.
"""
import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats as scipy_stats

from alphafuse.cache import CacheError, write_split
from alphafuse.fuse import AlphaFuseHead, TrainConfig, fuse_run, load_splits, predict_logits, train_head, train_heads_stacked
from alphafuse.fuse.train import single_thread
from alphafuse.fuse.grid import (RESULT_COLUMNS, config_key, configs_from_options, describe, format_summary_table,
                       head_configs, paper_preset, parse_alphas, parse_late_weights, run_grid, summarize, sweep)
from alphafuse.fuse.stats import mean_interval, paired_bootstrap
from tests.test_fuse import BACKBONES, FAST, make_split
from tests.test_heads import TINY_MBT, with_extras

REQUIRED_COLUMNS = ["head", "modalities", "target", "transform", "alpha", "seed", "val_top1", "test_top1", "test_top5",
                    "test_map", "test_loss", "test_top1_no_video", "test_top1_no_audio", "best_epoch"]
SMALL = TrainConfig(**{**FAST, "epochs": 6})


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """Written to disk and read back, as the CLI does."""
    cache = tmp_path_factory.mktemp("cache")
    for split in (make_split("train", 150, 0), make_split("val", 60, 1), make_split("test", 60, 2)):
        write_split(cache / f"{split.split}.h5", split)
    loaded = load_splits(cache)
    return loaded["train"], loaded["val"], loaded["test"]


@pytest.fixture(scope="module")
def preset(splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("grids") / "paper"
    return out, run_grid(*splits, paper_preset(seeds=2, base=SMALL), out)


@pytest.fixture
def threads():
    """Tests that set the torch thread count give the previous one back."""
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "train_seconds"}


# Stacked heads run batched matmuls (bmm), single heads plain ones (mm): different BLAS kernels,
# equal on one CPU but not by construction, so they are compared within float32 tolerance.
RTOL, ATOL = 1e-4, 1e-5


def assert_rows_close(a: dict, b: dict, what="") -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float) and isinstance(y, float):
            assert np.isclose(x, y, rtol=RTOL, atol=ATOL, equal_nan=True), (what, key, x, y)
        else:
            assert x == y, (what, key, x, y)


# -- configuration lists ---------------------------------------------------------------------

def test_parse_alphas_ranges_include_the_stop_without_float_drift():
    assert parse_alphas("0.25:3.0:0.25") == [0.25 * i for i in range(1, 13)]
    assert parse_alphas("0.1:0.3:0.1") == [0.1, 0.2, 0.3]
    assert parse_alphas("0.1:0.35:0.1") == [0.1, 0.2, 0.3]      # the stop need not be on the grid
    assert parse_alphas("2, 0.5,2") == [0.5, 2.0]
    assert parse_alphas("0.5:1:0.25,3") == [0.5, 0.75, 1.0, 3.0]
    assert parse_alphas(1.5) == [1.5] and parse_alphas([2, 0.5]) == [0.5, 2.0]


@pytest.mark.parametrize("text, message", [
    ("", "no alphas"), (" , ", "no alphas"), ("3:1:0.5", "empty range"), ("0:1:0", "step must be positive"),
    ("1:2", "start:stop:step"), ("a,b", "not a number"), ("0:1e9:1e-3", "not a grid anyone wants"),
    ("nan", "not finite"),
])
def test_parse_alphas_errors_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_alphas(text)


def test_paper_preset_is_table_1_plus_baselines():
    base = TrainConfig(epochs=7, lr=3e-4)
    configs = paper_preset(seeds=3, base=base)
    assert len(configs) == 9 * 3
    assert all(c.epochs == 7 and c.lr == 3e-4 for c in configs)
    kinds = {(c.modalities, c.transform, c.target if c.transform != "none" else "", c.alpha) for c in configs}
    assert kinds == {("both", "none", "", None),
                     *{("both", t, m, a) for m in ("video", "audio")
                       for t, a in (("sqrt", None), ("pos_scalar", 1.5), ("neg_scalar", 0.75))},
                     ("video", "none", "", None), ("audio", "none", "", None)}
    assert sorted({c.seed for c in configs}) == [0, 1, 2]
    assert len(paper_preset(seeds=[4, 9], learned=True)) == 11 * 2


def test_sweep_lists_transforms_targets_alphas_baseline_and_learned():
    configs = sweep("scale", "timesformer,ast", "0.25:3.0:0.25", seeds=3)
    assert len(configs) == (1 + 2 * 12 + 2) * 3
    scaled = [c for c in configs if c.transform == "scale"]
    assert {c.target for c in scaled} == {"video", "audio"}
    assert sorted({c.alpha for c in scaled}) == parse_alphas("0.25:3.0:0.25")
    assert {c.transform for c in configs} == {"none", "scale", "learned"}
    plain = sweep(["pos_scalar", "sqrt"], ["video"], "1.5,2", seeds=1, baseline=False, learned=False)
    assert [(c.transform, c.alpha) for c in plain] == [("pos_scalar", 1.5), ("pos_scalar", 2.0), ("sqrt", None)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(transforms="pos_scalar", alphas="0.5:2:0.5"), r"pos_scalar needs alpha > 1: alpha 0.5, 1 from the sweep"),
    (dict(transforms="neg_scalar", alphas="0.5,1.5"), r"neg_scalar needs 0 < alpha < 1: alpha 1.5"),
    (dict(transforms="scale", alphas="0,1"), r"scale needs alpha > 0: alpha 0"),
    (dict(transforms="scale"), "needs alphas"),
    (dict(transforms="learned", alphas="1,2"), "takes no alpha"),
    (dict(transforms="cube", alphas="1"), "unknown transform"),
    (dict(transforms="scale", targets="lidar", alphas="1"), "unknown target"),
    (dict(transforms="scale", alphas="1", seeds=0), "seeds must be at least 1"),
])
def test_bad_sweeps_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sweep(**kwargs)


def test_configs_from_options_as_the_cli_gives_them():
    assert len(configs_from_options(preset="paper", seeds=2)) == 18
    assert len(configs_from_options(transforms="scale", alphas="1,2", targets="ast", seeds=1)) == 1 + 2 + 1
    with pytest.raises(ValueError, match="unknown preset"):
        configs_from_options(preset="mine")
    with pytest.raises(ValueError, match="not both"):
        configs_from_options(preset="paper", alphas="1,2")
    with pytest.raises(ValueError, match="nothing to run"):
        configs_from_options()


# -- statistics ------------------------------------------------------------------------------

def test_mean_interval_is_the_t_interval():
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    half = scipy_stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)   # sd of 1, 2, 3 is 1
    assert mean == 2.0 and low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    assert half == pytest.approx(2.4841, abs=1e-4)
    assert mean_interval([0.4, 0.4, 0.4]) == (pytest.approx(0.4), pytest.approx(0.4), pytest.approx(0.4))
    one = mean_interval([0.7])
    assert one[0] == 0.7 and math.isnan(one[1]) and math.isnan(one[2])
    assert all(math.isnan(v) for v in mean_interval([]))


def test_paired_bootstrap_known_answers():
    rng = np.random.default_rng(5)
    base = rng.random((3, 40)) < 0.5
    same = paired_bootstrap(base, base.copy())
    assert (same["diff"], same["low"], same["high"]) == (0.0, 0.0, 0.0)

    # Right on exactly k more clips, wrong on none the baseline got: the difference is k/n, and
    # no resample can make it negative.
    k, n = 4, 40
    baseline = np.zeros(n, bool)
    baseline[:20] = True
    better = baseline.copy()
    better[20:20 + k] = True
    boot = paired_bootstrap(better, baseline, resamples=4000)
    assert boot["diff"] == pytest.approx(k / n)
    assert 0 <= boot["low"] < k / n < boot["high"]
    # Each resampled mean is Binomial(n, k/n) / n: compare with the normal approximation.
    sd = math.sqrt(k / n * (1 - k / n) / n)
    assert boot["high"] - boot["low"] == pytest.approx(2 * 1.96 * sd, rel=0.2)
    # Pooling seeds: +2 clips with seed 0, +0 with seed 1 -> +1 clip on average.
    two = np.stack([baseline, baseline])
    mixed = two.copy()
    mixed[0, 30:32] = True
    assert paired_bootstrap(mixed, two)["diff"] == pytest.approx(1 / n)
    # Reproducible for a given seed.
    assert paired_bootstrap(better, baseline, seed=3) == paired_bootstrap(better, baseline, seed=3)
    with pytest.raises(ValueError, match="same seeds and clips"):
        paired_bootstrap(better, two)


def test_summary_pairs_each_seed_with_the_baseline_of_that_seed():
    labels = np.zeros(10, dtype=np.int32)
    base, other = TrainConfig(), TrainConfig(transform="scale", target="video", alpha=2.0)
    rows, predicted = [], []
    # The baseline is right on 5 clips with seed 0 and 6 with seed 1; "other" on 7 and 6, and
    # also has a seed 2 that has no baseline to pair with (it is left out of the difference).
    for cfg, seed, right in ((base, 0, 5), (base, 1, 6), (other, 0, 7), (other, 1, 6), (other, 2, 0)):
        p = np.ones(10, dtype=np.int32)
        p[:right] = 0
        predicted.append(p)
        rows.append({"_key": config_key(cfg), "config_id": 0, "config": describe(cfg), "modalities": "both",
                     "target": cfg.target, "transform": cfg.transform, "alpha": cfg.alpha, "seed": seed,
                     **{m: right / 10 for m in ("val_top1", "test_top1", "test_top5", "test_map")},
                     "test_loss": 1.0, "val_loss": 1.0, "best_epoch": 3, "learned_alpha": None})
    learned = TrainConfig(transform="learned", target="audio")
    for seed, alpha in ((0, 0.5), (1, 2.0)):
        rows.append({**rows[seed], "_key": config_key(learned), "config": describe(learned), "transform": "learned",
                     "alpha": None, "learned_alpha": alpha, "test_top1": 0.95 + 0.05 * seed})
        predicted.append(predicted[seed])
    summary = {s["transform"]: s for s in summarize(rows, np.stack(predicted), labels, resamples=500)}
    assert summary["scale"]["seeds"] == 3 and summary["scale"]["vs_none_seeds"] == 2
    assert summary["scale"]["vs_none_diff"] == pytest.approx(0.1)     # (7 + 6) / 2 - (5 + 6) / 2 clips of 10
    assert summary["scale"]["test_top1_mean"] == pytest.approx(13 / 30)
    assert summary["none"]["vs_none_diff"] == 0.0
    assert summary["none"]["learned_alpha_mean"] is None
    # The learned alpha is averaged in log space (the parameter trained): 0.5 and 2 average to 1,
    # and the interval stays positive. Accuracy intervals are cut to [0, 1].
    alpha = summary["learned"]
    assert alpha["learned_alpha_mean"] == pytest.approx(1.0) and 0 < alpha["learned_alpha_low"] < 1
    assert alpha["learned_alpha_high"] == pytest.approx(1 / alpha["learned_alpha_low"])
    assert alpha["test_top1_mean"] == pytest.approx(0.975) and alpha["test_top1_high"] == 1.0


# -- running a grid --------------------------------------------------------------------------

def test_preset_end_to_end_writes_results_summary_and_plots(preset):
    out, result = preset
    for name in ("results.csv", "summary.csv", "summary.json", "predictions.npz", "preset_bars.png"):
        assert (out / name).is_file(), name
    assert not (out / "alpha_curve.png").exists()
    assert not list(out.glob("*.tmp"))
    rows = read_csv(out / "results.csv")
    assert len(rows) == 9 * 2
    assert list(rows[0])[:len(REQUIRED_COLUMNS)] == REQUIRED_COLUMNS
    assert list(rows[0]) == list(RESULT_COLUMNS)
    assert {(r["transform"], r["target"], r["alpha"]) for r in rows} >= {("neg_scalar", "audio", "0.75"),
                                                                         ("none", "", "")}
    for r in rows:
        assert 0 <= float(r["test_top1"]) <= float(r["test_top5"]) <= 1
        assert 1 <= int(r["best_epoch"]) <= SMALL.epochs
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["configs"]) == 9 and summary["test_clips"] == 60 and summary["runs"] == 18
    fused = {s["config"]: s for s in summary["configs"]}
    # The synthetic task needs both modalities: the unimodal heads lose to the baseline, and the
    # paired interval over the test clips says so.
    for alone in ("video only", "audio only"):
        assert fused[alone]["vs_none_high"] < 0
    assert read_csv(out / "summary.csv")[0]["config"] == "none"
    predictions = np.load(out / "predictions.npz")
    assert predictions["predicted"].shape == (18, 60)
    assert np.mean(predictions["predicted"][0] == predictions["labels"]) == float(rows[0]["test_top1"])
    with Image.open(out / "preset_bars.png") as image:
        assert image.format == "PNG" and min(image.size) > 100
        image.verify()
    # Zeroing a modality the head never reads changes nothing; the fused head needs both.
    for r in result.rows:
        if r["modalities"] == "video":
            assert r["test_top1_no_audio"] == r["test_top1"] and r["test_top1_no_video"] < r["test_top1"] - 0.2
        if r["modalities"] == "audio":
            assert r["test_top1_no_video"] == r["test_top1"] and r["test_top1_no_audio"] < r["test_top1"] - 0.2
    assert fused["none"]["test_top1_no_video_mean"] < fused["none"]["test_top1_mean"] - 0.2
    table = format_summary_table(result.summary, 60)
    for label in fused:
        assert label in table
    assert "(baseline)" in table and "one clip = 1.7 points" in table
    assert "learnable ceiling: 60 of 60 test clips have a label seen in training" in table
    assert format_summary_table(result) == table


def test_grid_rows_equal_single_fuse_runs(splits, preset, tmp_path):
    """What `cli.py fuse` reports for a configuration and seed is what the grid reports.

    The grid's workers train on one thread, so the single runs here do too. The preset's small
    heads are trained stacked (batched matmuls) and the single runs one at a time (plain ones):
    other BLAS kernels, so losses and mAP are compared within RTOL/ATOL; the predictions, and so
    top-1, top-5 and the best epoch, must agree exactly."""
    _, result = preset
    train, val, test = splits
    picked = [r for r in result.rows if (r["transform"], r["target"], r["seed"]) in
              {("none", "", 1), ("neg_scalar", "video", 0), ("none", "", 0)} or r["modalities"] == "audio"][:4]
    assert len(picked) == 4
    for row in picked:
        cfg = replace(SMALL, modalities=row["modalities"], transform=row["transform"], alpha=row["alpha"],
                      target=row["target"] or "audio", seed=row["seed"])
        with single_thread():
            metrics = fuse_run(train, val, test, cfg, tmp_path / f"run{len(list(tmp_path.iterdir()))}")
        assert row["test_top1"] == metrics["test"]["top1"] and row["test_top5"] == metrics["test"]["top5"]
        assert row["val_top1"] == metrics["val"]["top1"] and row["best_epoch"] == metrics["best_epoch"]
        for got, want in ((row["test_map"], metrics["test"]["map"]), (row["test_loss"], metrics["test"]["loss"]),
                          (row["val_loss"], metrics["val"]["loss"])):
            assert np.isclose(got, want, rtol=RTOL, atol=ATOL), (row["config"], got, want)


def test_evaluation_does_not_depend_on_the_thread_count(threads):
    """predict_logits always computes on one thread (so the same head scores the same on any core
    count) and gives the caller's thread count back."""
    torch.manual_seed(0)
    model = AlphaFuseHead(768, 768, 10)
    video, audio = torch.randn(20, 768), torch.randn(20, 768)
    torch.set_num_threads(2)
    logits = predict_logits(model, video, audio)
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert torch.equal(predict_logits(model, video, audio), logits)
    with torch.no_grad():
        assert torch.equal(model.eval()(video, audio), logits)   # one thread here too: the same arithmetic


def test_joblib_and_vectorized_give_the_same_results(splits, preset, tmp_path):
    """Within float32 tolerance (RTOL, ATOL): the two run different matmul kernels."""
    _, vectorized = preset
    assert vectorized.method == "vectorized"   # auto, for heads this small
    configs = [c for c in paper_preset(seeds=2, base=SMALL) if c.seed == 1 or c.transform == "sqrt"]
    calls = []
    joblib = run_grid(*splits, configs, tmp_path / "joblib", method="joblib", jobs=2,
                      progress=lambda done, total, row: calls.append((done, total, row["transform"])))
    assert [c[:2] for c in calls] == [(i, len(configs)) for i in range(1, len(configs) + 1)]
    by_key = {(r["config"], r["seed"]): comparable(r) for r in vectorized.rows}
    for row, predicted in zip(joblib.rows, joblib.predicted):
        assert_rows_close(comparable(row) | {"config_id": 0}, by_key[(row["config"], row["seed"])] | {"config_id": 0},
                          row["config"])
        i = next(i for i, r in enumerate(vectorized.rows) if (r["config"], r["seed"]) == (row["config"], row["seed"]))
        np.testing.assert_array_equal(predicted, vectorized.predicted[i])


def test_stacked_training_reproduces_train_head(splits, threads):
    train, val, _ = splits
    base = replace(SMALL, epochs=3, dropout=0.5)
    configs = [replace(base, transform=t, target=g, alpha=a, seed=s, modalities=m) for t, g, a, s, m in [
        ("none", "audio", None, 0, "both"), ("sqrt", "video", None, 0, "both"), ("scale", "audio", 0.3, 1, "both"),
        ("learned", "video", None, 1, "both"), ("none", "audio", None, 2, "video"),
        ("pos_scalar", "audio", 2.0, 0, "audio"),
    ]]
    torch.set_num_threads(1)
    for cfg, stacked in zip(configs, train_heads_stacked(train, val, configs)):
        single = train_head(train, val, cfg)
        assert len(stacked.history) == len(single.history)
        for a, b in zip(stacked.history, single.history):
            assert_rows_close(a, b, describe(cfg))
        assert stacked.best_epoch == single.best_epoch
        for which in ("best_state_dict", "last_state_dict"):
            a, b = getattr(stacked, which), getattr(single, which)
            assert a.keys() == b.keys(), (describe(cfg), which)
            for k in a:
                torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=ATOL, msg=f"{describe(cfg)} {which} {k}")


def test_sweep_draws_the_alpha_curve_and_reports_learned_alpha(splits, tmp_path):
    configs = sweep("scale", "video,audio", "0.5:1.5:0.5", seeds=2, base=replace(SMALL, epochs=3))
    result = run_grid(*splits, configs, tmp_path / "sweep")
    assert (tmp_path / "sweep" / "alpha_curve.png").is_file() and not (tmp_path / "sweep" / "preset_bars.png").exists()
    with Image.open(tmp_path / "sweep" / "alpha_curve.png") as image:
        image.verify()
    rows = read_csv(tmp_path / "sweep" / "results.csv")
    assert len(rows) == (1 + 2 * 3 + 2) * 2
    learned = [r for r in rows if r["transform"] == "learned"]
    assert all(r["alpha"] == "" and float(r["learned_alpha"]) != 1.0 for r in learned)
    assert all(r["learned_alpha"] == "" for r in rows if r["transform"] != "learned")
    best = {b["target"]: b for b in result.best_alpha}
    assert set(best) == {"video", "audio"}
    for target in ("video", "audio"):
        # The best alpha is the one with the highest mean val top-1 (ties: lower val loss), recomputed
        # here from results.csv; the learned alpha is the geometric mean of the seeds' alphas.
        val_by_alpha = {}
        for r in rows:
            if r["transform"] == "scale" and r["target"] == target:
                val_by_alpha.setdefault(float(r["alpha"]), []).append((float(r["val_top1"]), float(r["val_loss"])))
        means = {a: (np.mean([v for v, _ in vs]), -np.mean([loss for _, loss in vs])) for a, vs in val_by_alpha.items()}
        assert best[target]["best_alpha"] == max(means, key=means.get)
        alphas = [float(r["learned_alpha"]) for r in learned if r["target"] == target]
        assert best[target]["learned_alpha_mean"] == pytest.approx(math.exp(np.mean(np.log(alphas))), rel=1e-9)
    table = format_summary_table(result.summary)
    assert "best alpha by val top-1" in table and "learned alpha" in table


def test_learned_alpha_turns_down_a_modality_that_is_noise():
    """Only video tells these classes apart; audio is loud noise: the learned scale on audio
    drops below 1 and the one on video rises above it."""
    def noisy(split, n, seed):
        s = make_split(split, n, seed, classes=range(3))
        s.embeddings["audio"] = np.random.default_rng(seed + 100).normal(0, 5, s.audio.shape).astype(np.float32)
        return s
    train, val = noisy("train", 300, 0), noisy("val", 120, 1)
    cfg = replace(SMALL, epochs=10, transform="learned")
    audio = train_head(train, val, replace(cfg, target="audio")).model.learned_alpha
    video = train_head(train, val, replace(cfg, target="video")).model.learned_alpha
    assert audio < 0.95 and video > 1.2, (audio, video)


def test_bad_grid_inputs_are_refused_before_training(splits, tmp_path):
    train, val, test = splits
    configs = paper_preset(seeds=1, base=SMALL)[:2]
    with pytest.raises(ValueError, match="no configurations"):
        run_grid(train, val, test, [], tmp_path / "a")
    with pytest.raises(ValueError, match="unknown method"):
        run_grid(train, val, test, configs, tmp_path / "a", method="gpu_magic")
    with pytest.raises(ValueError, match="appears twice"):
        run_grid(train, val, test, configs + configs[:1], tmp_path / "a")
    with pytest.raises(ValueError, match="needs a test split"):
        run_grid(train, val, None, configs, tmp_path / "a")
    with pytest.raises(ValueError, match="jobs must be"):
        run_grid(train, val, test, configs, tmp_path / "a", jobs=0)
    other = {**BACKBONES, "audio": {**BACKBONES["audio"], "fingerprint": "ast-base-9"}}
    with pytest.raises(CacheError, match="audio.fingerprint"):
        run_grid(train, val, make_split("test", 30, 5, backbones=other), configs, tmp_path / "a")
    with pytest.raises(CacheError, match="extract with --tokens"):
        run_grid(train, val, test, head_configs("bottleneck", seeds=1, base=SMALL), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="takes no alpha"):
        TrainConfig(transform="learned", alpha=2.0)
    run_grid(train, val, test, configs[:1], tmp_path / "b")
    with pytest.raises(FileExistsError, match="already holds a grid"):
        run_grid(train, val, test, configs[:1], tmp_path / "b")


def test_overwritten_grid_keeps_no_file_of_the_previous_one(splits, tmp_path):
    base = replace(SMALL, epochs=1)
    out = tmp_path / "grid"
    run_grid(*splits, sweep("scale", "video", "0.5,1", seeds=1, base=base, learned=False), out)
    assert (out / "alpha_curve.png").is_file()
    run_grid(*splits, paper_preset(seeds=1, base=base)[:2], out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [".alphafuse.json", ".alphafuse.lock", "config.json",
                                                     "predictions.npz", "preset_bars.png", "results.csv", "summary.csv",
                                                     "summary.json"]
    assert len(read_csv(out / "results.csv")) == 2


# -- the heads axis --------------------------------------------------------------------------

def test_head_configs_and_late_weights():
    configs = head_configs("gated,late", seeds=2, base=replace(SMALL, transform="sqrt", target="video"),
                           late_weights="0.25,learned")
    assert [(c.head, c.head_options, c.transform, c.seed) for c in configs] == [
        ("concat", {}, "none", 0), ("concat", {}, "none", 1), ("gated", {}, "none", 0), ("gated", {}, "none", 1),
        ("late", {"weight": 0.25}, "none", 0), ("late", {"weight": 0.25}, "none", 1),
        ("late", {"weight": None}, "none", 0), ("late", {"weight": None}, "none", 1)]
    assert [describe(c) for c in configs[::2]] == ["none", "gated", "late w=0.25", "late (learned w)"]
    assert parse_late_weights([0.5, "learned", 0.5]) == [0.5, None]
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        parse_late_weights("1.5")
    with pytest.raises(ValueError, match="unknown head 'mlp'"):
        head_configs("gated,mlp")
    # A preset plus the heads axis share one baseline.
    both = configs_from_options(preset="paper", seeds=2, heads="concat,gated")
    assert len(both) == 9 * 2 + 2 and sum(describe(c) == "none" for c in both) == 2
    # A base configured for another head lends the preset its training settings, not its head.
    mixed = configs_from_options(preset="paper", seeds=1, heads="bottleneck",
                                 base=TrainConfig(head="bottleneck", head_options=TINY_MBT, epochs=3))
    assert {(c.head, c.epochs) for c in mixed} == {("concat", 3), ("bottleneck", 3)}
    assert [c.head_options for c in mixed if c.head == "bottleneck"] == [TINY_MBT]


@pytest.fixture(scope="module")
def heads_grid(tmp_path_factory):
    splits = (with_extras(make_split("train", 150, 0), 10), with_extras(make_split("val", 60, 1), 11),
              with_extras(make_split("test", 60, 2), 12))
    base = TrainConfig(head="bottleneck", head_options=TINY_MBT, **{**FAST, "epochs": 3})
    configs = head_configs(("concat", "gated", "late", "bottleneck", "layers"), seeds=2, base=base)
    out = tmp_path_factory.mktemp("grids") / "heads"
    return splits, configs, out, run_grid(*splits, configs, out, jobs=2)


def test_heads_axis_has_the_same_seeds_intervals_and_pairwise_comparisons(heads_grid):
    splits, configs, out, result = heads_grid
    assert result.method == "vectorized"   # the concat heads stacked, the others one per task
    rows = read_csv(out / "results.csv")
    assert [(r["head"], int(r["seed"])) for r in rows] == [(c.head, c.seed) for c in configs]
    summary = {s["config"]: s for s in result.summary}
    assert set(summary) == {"none", "gated", "late (learned w)", "bottleneck bottlenecks=2 dim=16 layers=1 num_heads=2",
                            "layers"}
    for label, s in summary.items():
        assert s["seeds"] == 2 and s["vs_none_seeds"] == 2
        assert s["vs_none_low"] <= s["vs_none_diff"] <= s["vs_none_high"]
    assert summary["late (learned w)"]["learned_weight_mean"] not in (None, 0.5)
    # Every pair of heads, its difference recomputed from predictions.npz.
    saved = np.load(out / "predictions.npz")
    correct = saved["predicted"] == saved["labels"][None]
    index = {(r["config"], r["seed"]): i for i, r in enumerate(result.rows)}
    assert len(result.head_comparison) == 10
    for c in result.head_comparison:
        diff = np.mean([correct[index[(c["a"], s)]].mean() - correct[index[(c["b"], s)]].mean() for s in (0, 1)])
        assert c["diff"] == pytest.approx(diff, abs=1e-12) and c["low"] <= c["diff"] <= c["high"] and c["seeds"] == 2
    table = format_summary_table(result)
    assert "gated vs none: test top-1" in table and "layers vs bottleneck" in table
    assert json.loads((out / "summary.json").read_text())["head_comparison"] == result.head_comparison


def test_heads_grid_rows_equal_single_runs(heads_grid, tmp_path):
    splits, configs, _, result = heads_grid
    for cfg in (configs[2], configs[7]):   # gated seed 0, bottleneck seed 1: trained in worker processes
        with single_thread():
            metrics = fuse_run(*splits, cfg, tmp_path / cfg.head)
        row = next(r for r in result.rows if r["head"] == cfg.head and r["seed"] == cfg.seed)
        assert (row["test_top1"], row["test_loss"], row["val_loss"], row["best_epoch"]) == (
            metrics["test"]["top1"], metrics["test"]["loss"], metrics["val"]["loss"], metrics["best_epoch"])
        assert (row["test_top1_no_video"], row["test_top1_no_audio"]) == (
            metrics["missing_modality"]["test"]["no_video"], metrics["missing_modality"]["test"]["no_audio"])


def test_grid_states_the_learnable_ceiling(splits, tmp_path):
    _, val, test = splits
    train = make_split("train", 100, 0, classes=range(4))
    result = run_grid(train, val, test, paper_preset(seeds=1, base=replace(SMALL, epochs=1))[:1])
    seen = int(np.isin(test.labels, range(4)).sum())
    assert result.ceiling == {"clips": 60, "seen_label_clips": seen, "max_top1": seen / 60, "masked_classes": 2}
    assert f"learnable ceiling: {seen} of 60 test clips" in format_summary_table(result.summary)
    assert "the 2 class(es) absent from train are masked in prediction" in format_summary_table(result.summary)


def test_no_grid_row_exceeds_the_ceiling_when_every_test_label_is_unseen(tmp_path):
    """Train on classes 0-2, test on 3-5: every row, with a modality missing too, scores 0, and no
    row predicts a class it never saw, whichever way it was trained (stacked or one per task)."""
    train = make_split("train", 90, 0, classes=range(3))
    val, test = make_split("val", 30, 1, classes=range(3, 6)), make_split("test", 60, 2, classes=range(3, 6))
    base = replace(SMALL, epochs=1, lr=1e-6)   # nearly untrained: unmasked, chance hits would score
    configs = paper_preset(seeds=2, base=base) + [replace(base, head="gated", seed=0)]
    for method in ("vectorized", "joblib"):
        result = run_grid(train, val, test, configs, tmp_path / method, jobs=1, method=method)
        assert result.ceiling["max_top1"] == 0.0
        for row in result.rows:
            assert row["test_top1"] == row["test_top5"] == row["test_top1_no_video"] == row["test_top1_no_audio"] == 0
        assert result.predicted.max() < 3
        assert "the 3 class(es) absent from train are masked in prediction" in format_summary_table(result)
