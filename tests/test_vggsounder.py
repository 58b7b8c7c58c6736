"""evaluate --vggsounder and grid --vggsounder: VGGSounder's multi-label, modality-tagged scores.

Synthetic caches whose clip ids are real VGGSounder ids (named in the several ways manifests
name VGGSound files) and whose labels are VGGSound class names; a head trained on them. Every
figure is recomputed here from `evaluate --predictions`' CSV (or the run's own head) and the
package's label file, read with the csv module, not through fuse/vggsounder.py.
"""
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from alphafuse.cache import FeatureSplit, write_split
from alphafuse.fuse import TrainConfig, fuse_run, load_run, split_logits
from tests.test_fuse import BACKBONES, DIM, FAST, PREPROCESSING, make_split
from tests.inprocess import run_cli

vggsounder = pytest.importorskip("vggsounder")
DATA = Path(vggsounder.__file__).parent / "data"
LABELS = DATA / "vggsounder+background-music.csv"   # the file the package reads by default
OLD_LABELS = DATA / "vggsounder_0.1.6.csv"


def read_reference(path=LABELS):
    """{video id: [(label, modality), ...]}, {video id: meta flags}: the label file, read directly."""
    labels, meta = defaultdict(list), {}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            labels[row["video_id"]].append((row["label"], row["modality"]))
            meta[row["video_id"]] = {k: row[k] == "True" for k in ("background_music", "voice_over", "static_image")}
    return dict(labels), meta


def of_kind(pairs, kind):
    """The package's label modalities: a = A + AV, v = V + AV, av = AV, all = every label."""
    keep = {"all": ("A", "V", "AV"), "a": ("A", "AV"), "v": ("V", "AV"), "av": ("AV",)}[kind]
    return {label for label, modality in pairs if modality in keep}


def cli(*args):
    """The console entry point in this process: exit code, stdout, stderr (never a traceback)."""
    return run_cli(*args)


def error_line(code, err) -> str:
    lines = [line for line in err.splitlines() if line.startswith("Error")]
    assert code not in (0, 130) and len(lines) == 1, err
    return lines[0]


def relabel(split: FeatureSplit, clip_ids, names) -> FeatureSplit:
    return FeatureSplit(split.split, clip_ids, split.labels, split.video, split.audio, split.has_audio, names,
                        split.backbones, split.preprocessing)


@pytest.fixture(scope="module")
def reference():
    return read_reference()


@pytest.fixture(scope="module")
def world(tmp_path_factory, reference):
    """Six VGGSound classes; per class, VGGSounder clips labelled with it and with none of the
    other five. train: 120 matched clips; val: 30 clips of no VGGSound name; test: 42 matched
    clips (named ID_000030, test/ID_000030, ID_30.mp4), 6 matched clips with none of the six
    labels (never hit) and 12 unmatched clips."""
    labels, _ = reference
    count = defaultdict(int)
    for pairs in labels.values():
        for label in {x for x, _ in pairs}:
            count[label] += 1
    names = sorted(sorted(count, key=lambda n: (-count[n], n))[5:11])   # frequent, not the most common speech
    chosen = set(names)
    pools = {n: sorted(v for v, pairs in labels.items() if {x for x, _ in pairs} & chosen == {n}) for n in names}
    others = sorted(v for v, pairs in labels.items() if not {x for x, _ in pairs} & chosen)
    take = {n: iter(pool) for n, pool in pools.items()}

    def ids_for(split, forms):
        return [forms[i % len(forms)](next(take[names[c]])) for i, c in enumerate(split.labels)]

    cache = tmp_path_factory.mktemp("vggsounder-cache")
    train = make_split("train", 120, 0, names=names)
    train = relabel(train, ids_for(train, [lambda v: v]), names)
    val = make_split("val", 30, 1, names=names)
    val = relabel(val, [f"val_{i:04d}" for i in range(30)], names)
    test = make_split("test", 60, 2, names=names)
    forms = [lambda v: v, lambda v: f"test/{v}", lambda v: f"{v[:11]}_{int(v[12:])}.mp4"]
    test_ids = ids_for(make_split("test", 42, 2, names=names), forms)
    test_ids += [f"{v}.mp4" for v in others[:6]] + [f"clip_{i:03d}" for i in range(12)]
    truth = {c: (c if c.startswith("clip_") else c.split("/")[-1][:11] + "_" +
                 f"{int(c.split('/')[-1][12:].split('.')[0]):06d}") for c in test_ids}
    test = relabel(test, test_ids, names)
    for split in (train, val, test):
        write_split(cache / f"{split.split}.h5", split)
    run = tmp_path_factory.mktemp("vggsounder-runs") / "run"
    fuse_run(train, val, test, TrainConfig(**FAST), run)
    return {"cache": cache, "run": run, "names": names, "truth": truth, "test": test, "others": set(others[:6])}


def test_vggsound_ids_from_the_ways_manifests_name_files():
    from alphafuse.fuse.vggsounder import vggsound_id

    assert vggsound_id("--U7joUcTCo_000000") == "--U7joUcTCo_000000"
    assert vggsound_id("train/bpDicRIWZH4_000030") == "bpDicRIWZH4_000030"
    assert vggsound_id("bpDicRIWZH4_30.mp4") == "bpDicRIWZH4_000030"
    assert vggsound_id("a_b-c_d_e_f_000030_000040") == "a_b-c_d_e_f_000030"   # underscores in the id, end time
    assert vggsound_id("clip_0001") is None and vggsound_id("toolongyoutubeid_000030") is None


def test_evaluate_vggsounder_agrees_with_predictions_and_the_label_file(world, reference, tmp_path):
    labels, meta = reference
    predictions = tmp_path / "p.csv"
    code, out, err = cli("evaluate", "--run", world["run"], "--split", "test", "--cache-dir", world["cache"],
                         "--predictions", predictions, "--vggsounder")
    assert code == 0, err
    assert "VGGSounder" in out and "hit@1" in out and "modality confusion" in out
    result = json.loads((world["run"] / "vggsounder-test.json").read_text())

    names = world["names"]
    with open(predictions, newline="") as f:
        rows = [r for r in csv.DictReader(f)]
    matched = [(world["truth"][r["clip_id"]], r) for r in rows if world["truth"][r["clip_id"]] in labels]
    assert result["clips"] == len(matched) == 48 and result["unmatched"] == 12
    assert result["labels"]["version"] == "1.0" and result["labels"]["file"].endswith(LABELS.name)
    for kind in ("all", "a", "v", "av"):
        having = [(v, r) for v, r in matched if of_kind(labels[v], kind)]
        got = result["metrics"][kind]
        assert got["clips"] == len(having)
        assert got["in_vocabulary"] == sum(bool(of_kind(labels[v], kind) & set(names)) for v, _ in having)
        hit1 = np.mean([r["predicted"] in of_kind(labels[v], kind) for v, r in having])
        top5 = [sorted(names, key=lambda n: -float(r[n]))[:5] for _, r in having]
        hit5 = np.mean([bool(set(t) & of_kind(labels[v], kind)) for t, (v, _) in zip(top5, having)])
        assert got["hit@1"] == pytest.approx(hit1, abs=1e-12) and got["hit@5"] == pytest.approx(hit5, abs=1e-12)
        probs = np.array([[float(r[n]) for n in names] for _, r in having])
        truth = np.array([[n in of_kind(labels[v], kind) for n in names] for v, _ in having])
        aps = [average_precision_score(truth[:, j], probs[:, j]) for j in range(len(names)) if truth[:, j].any()]
        assert got["map"] == pytest.approx(np.mean(aps), abs=1e-6)   # the CSV keeps 6 significant digits
    assert 0.5 < result["metrics"]["all"]["hit@1"] < 1   # learned; the 6 clips without a head's label miss
    assert result["metrics"]["all"]["in_vocabulary"] == 42

    # Confusion, from the run's own head with each modality zeroed, against all labels.
    model, _ = load_run(world["run"])
    test = world["test"]
    top1 = {z: split_logits(model, test, zeroed=z).argmax(1).numpy() for z in ((), ("video",), ("audio",))}
    at = [i for i, c in enumerate(test.clip_ids) if world["truth"][c] in labels]
    hit = {z: np.array([names[p[i]] in of_kind(labels[world["truth"][test.clip_ids[i]]], "all") for i in at])
           for z, p in top1.items()}
    both, audio, video = hit[()], hit[("video",)], hit[("audio",)]
    expected = {"a": np.mean(audio & ~both), "v": np.mean(video & ~both), "av": np.mean(audio & video & ~both)}
    for k, v in expected.items():
        assert 0 <= result["confusion"][k] <= 1
        assert result["confusion"][k] == pytest.approx(v, abs=1e-12)
    assert result["confusion"]["hit@1"]["both"] == pytest.approx(both.mean(), abs=1e-12)

    # The meta-label slices hold the matched clips with that flag.
    for flag in ("background_music", "voice_over", "static_image"):
        part = result["meta"][flag]
        assert part["clips"] == sum(meta[v][flag] for v, _ in matched)
        if part["clips"]:
            having = [(v, r) for v, r in matched if meta[v][flag]]
            assert part["metrics"]["all"]["hit@1"] == pytest.approx(
                np.mean([r["predicted"] in of_kind(labels[v], "all") for v, r in having]), abs=1e-12)
            assert all(0 <= part["confusion"][k] <= 1 for k in ("a", "v", "av"))
    assert "never hit" in result["vocabulary"]["outside"] and result["vocabulary"]["classes"] == 6


def test_another_label_file_by_flag(world, tmp_path):
    old, _ = read_reference(OLD_LABELS)
    code, out, err = cli("evaluate", "--run", world["run"], "--split", "test", "--cache-dir", world["cache"],
                         "--vggsounder", "--vggsounder-labels", OLD_LABELS)
    assert code == 0, err
    result = json.loads((world["run"] / "vggsounder-test.json").read_text())
    assert result["labels"]["version"] == "0.1.6"
    assert result["clips"] == sum(world["truth"][c] in old for c in world["test"].clip_ids)
    bad = tmp_path / "labels.csv"
    bad.write_text("video_id,label\nx,y\n")
    line = error_line(*cli("evaluate", "--run", world["run"], "--split", "test", "--cache-dir", world["cache"],
                           "--vggsounder", "--vggsounder-labels", bad)[::2])
    assert str(bad) in line and "modality" in line
    line = error_line(*cli("evaluate", "--run", world["run"], "--split", "test", "--cache-dir", world["cache"],
                           "--vggsounder", "--vggsounder-labels", tmp_path / "absent.csv")[::2])
    assert "absent.csv" in line


def test_a_split_without_vggsounder_clips_is_one_line(world):
    line = error_line(*cli("evaluate", "--run", world["run"], "--split", "val", "--cache-dir", world["cache"],
                           "--vggsounder")[::2])
    assert "val" in line and "none of its 30 clips" in line
    assert not (world["run"] / "vggsounder-val.json").exists()


def test_a_vocabulary_that_is_not_vggsounds_names_three_labels(tmp_path):
    from alphafuse.data.demo import CLASSES

    names = [c.name for c in CLASSES]
    cache = tmp_path / "cache"
    for name, n, seed in (("train", 60, 0), ("test", 12, 2)):
        write_split(cache / f"{name}.h5", make_split(name, n, seed, names=names))
    run = tmp_path / "run"
    fuse_run(make_split("train", 60, 0, names=names), None, None, TrainConfig(**{**FAST, "epochs": 1}), run)
    line = error_line(*cli("evaluate", "--run", run, "--split", "test", "--cache-dir", cache, "--vggsounder")[::2])
    assert sum(repr(n) in line for n in names) == 3 and "not VGGSound classes" in line and str(run) in line


def test_grid_adds_vggsounder_hit1_and_confusion_with_intervals(world, reference, tmp_path):
    labels, _ = reference
    out = tmp_path / "grid"
    code, stdout, err = cli("grid", "--cache-dir", world["cache"], "--out", out, "--transforms", "neg_scalar",
                            "--alphas", "0.5", "--targets", "audio", "--no-learned", "--seeds", "2", "--epochs", "3",
                            "--hidden", "16", "--batch-size", "32", "--lr", "0.003", "--jobs", "1", "--vggsounder")
    assert code == 0, err
    assert "VGGSounder: 48 test clips matched" in stdout
    summary = json.loads((out / "summary.json").read_text())
    saved = np.load(out / "predictions.npz")
    results = list(csv.DictReader(open(out / "results.csv", newline="")))
    names = world["names"]
    ids = [str(c) for c in saved["clip_ids"]]
    at = [i for i, c in enumerate(ids) if world["truth"][c] in labels]
    assert summary["vggsounder"]["clips"] == len(at)
    for config in summary["configs"]:
        rows = [i for i, r in enumerate(results) if r["config"] == config["config"]]
        per_row = [np.mean([names[saved["predicted"][r][i]] in of_kind(labels[world["truth"][ids[i]]], "all")
                            for i in at]) for r in rows]
        assert config["vggsounder_hit1_mean"] == pytest.approx(np.mean(per_row), abs=1e-12)

        def hit(key, r):
            return np.array([names[saved[key][r][i]] in of_kind(labels[world["truth"][ids[i]]], "all") for i in at])
        audio = [hit("predicted_no_video", r) & ~hit("predicted", r) for r in rows]   # video zeroed: audio's guess
        video = [hit("predicted_no_audio", r) & ~hit("predicted", r) for r in rows]
        for k, confused in (("a", audio), ("v", video), ("av", [a & v for a, v in zip(audio, video)])):
            assert 0 <= config[f"vggsounder_confusion_{k}_mean"] <= 1
            assert config[f"vggsounder_confusion_{k}_mean"] == pytest.approx(np.mean([c.mean() for c in confused]),
                                                                            abs=1e-12)
        assert config["vggsounder_hit1_low"] <= config["vggsounder_hit1_mean"] <= config["vggsounder_hit1_high"]
        if config["transform"] == "none":
            assert config["vggsounder_vs_none_diff"] == 0
        else:
            assert config["vggsounder_vs_none_seeds"] == 2
            assert config["vggsounder_vs_none_low"] <= config["vggsounder_vs_none_diff"] \
                <= config["vggsounder_vs_none_high"]
    assert saved["predicted_no_video"].shape == saved["predicted"].shape
    header = open(out / "summary.csv").readline()
    assert "vggsounder_hit1_mean" in header and "vggsounder_confusion_av_high" in header


def test_real_subset_train_split(subset_dir, reference, tmp_path):
    """The real subset's clip ids (path,label,split manifest: file stems) and its 91 labels, with
    synthetic embeddings: its train split includes VGGSounder clips; the count and hit@1 agree
    with the label file."""
    labels, _ = reference
    with open(subset_dir / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if (subset_dir / r["path"]).is_file()]   # what extraction keeps
    names = sorted({r["label"] for r in rows})
    rng = np.random.default_rng(0)
    cache = tmp_path / "cache"
    for split in ("train", "test"):
        part = [r for r in rows if r["split"] == split]
        y = np.array([names.index(r["label"]) for r in part])
        write_split(cache / f"{split}.h5", FeatureSplit(
            split, [Path(r["path"]).stem for r in part], y, rng.normal(0, 1, (len(part), DIM)) + y[:, None] * 0.1,
            rng.normal(0, 1, (len(part), DIM)), None, names, BACKBONES, PREPROCESSING))
    code, _, err = cli("fuse", "--cache-dir", cache, "--out", tmp_path / "run", "--epochs", "2", "--hidden", "16",
                       "--device", "cpu")
    assert code == 0, err
    code, _, err = cli("evaluate", "--run", tmp_path / "run", "--split", "train", "--predictions", tmp_path / "p.csv",
                       "--vggsounder")
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "vggsounder-train.json").read_text())
    with open(tmp_path / "p.csv", newline="") as f:
        matched = [r for r in csv.DictReader(f) if r["clip_id"] in labels]
    assert result["clips"] == len(matched) > 0
    assert result["metrics"]["all"]["hit@1"] == pytest.approx(
        np.mean([r["predicted"] in of_kind(labels[r["clip_id"]], "all") for r in matched]), abs=1e-12)
    assert all(0 <= result["confusion"][k] <= 1 for k in ("a", "v", "av"))
