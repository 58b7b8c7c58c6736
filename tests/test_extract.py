"""Stage 1 end to end: extraction into HDF5, with kills, resumes, shards and bad clips. A separate
process only where it is the point (SIGKILL, Ctrl-C, torchrun); other commands run in process."""
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alphafuse.cache import CacheError, list_stores, open_split, read_split
from alphafuse.data import read_manifest
from alphafuse.data.synth import write_clip
from alphafuse.extract import load_ast, load_timesformer
from alphafuse.extract.runner import extract_split
from tests.inprocess import run_cli
from tests.paths import REPO

TINY = ["--arch", "tiny", "--workers", "0", "--batch-size", "4"]


def _cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], cwd=kwargs.pop("cwd", REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _tiny_models():
    return load_timesformer(arch="tiny"), load_ast(arch="tiny")


def _parts(cache):
    """Every part file of split train in every store of ``cache``."""
    return list(Path(cache).glob("*/train.parts/part-*.h5"))


def _assert_same_cache(a, b, atol=1e-5):
    assert a.clip_ids == b.clip_ids
    assert sorted(a.errors) == sorted(b.errors)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.has_audio, b.has_audio)
    np.testing.assert_allclose(a.video, b.video, atol=atol, rtol=0)
    np.testing.assert_allclose(a.audio, b.audio, atol=atol, rtol=0)


@pytest.fixture(scope="session")
def subset_manifest(subset_dir):
    return read_manifest(subset_dir / "manifest.csv")


@pytest.fixture(scope="session")
def subset_train_cache(subset_manifest, subset_cache):
    """What an uninterrupted extraction of the first 24 train clips (the 24th absent on disk) must
    give: those clips of the session's whole-subset extraction (tests/conftest.py)."""
    first = {c.clip_id for c in subset_manifest.split("train")[:24]}
    full = read_split(subset_cache / "train.h5")
    reference = full.take([i for i, clip_id in enumerate(full.clip_ids) if clip_id in first])
    reference.errors = [e for e in full.errors if e[0] in first]
    assert len(reference) == 23 and len(reference.errors) == 1     # a resumed run must keep its clip error too
    return reference


def test_every_real_clip_once_and_absent_ones_as_errors(subset_manifest, subset_cache):
    """Every clip of the real subset through data/ and the backbones (the README's extraction):
    each present clip once, with its label and its audio, decoded to inputs of the recorded
    shapes, each embedding finite and its own; each absent clip an error naming it."""
    video, audio, files = [], [], []
    for split in subset_manifest.splits:
        cache = read_split(subset_cache / f"{split}.h5")
        clips = subset_manifest.split(split)
        present = [c.clip_id for c in clips if c.path.exists()]
        absent = {c.clip_id for c in clips if not c.path.exists()}
        assert cache.clip_ids == present
        assert dict(cache.errors) == dict.fromkeys(absent, "file not found")
        assert np.isfinite(cache.video).all() and np.isfinite(cache.audio).all()
        assert cache.video.shape == (len(present), 64) and cache.audio.shape == (len(present), 64)
        assert [subset_manifest.label_names[i] for i in cache.labels] == \
               [c.label for c in clips if c.path.exists()]
        assert cache.has_audio.all()                    # every real clip has an AAC stream
        assert cache.backbones["video"]["config"]["arch"] == "tiny"
        spec = cache.preprocessing
        assert (spec["video"]["num_frames"], spec["video"]["img_size"]) == (8, 224)
        assert (spec["audio"]["target_length"], spec["audio"]["num_mel_bins"]) == (1024, 128)
        video.append(cache.video)
        audio.append(cache.audio)
        files += [hashlib.sha256(c.path.read_bytes()).hexdigest() for c in clips if c.path.exists()]
    # Clips embed alike exactly when their files are alike: a decode that gave blank frames,
    # silence or another clip's inputs would make different files embed alike. (The subset
    # holds one byte-identical pair, VGGSound's bpHdHkhHFMc at 0 s and at 1 s.)
    same_file = np.equal.outer(np.array(files), np.array(files))
    assert len(files) == 122 and same_file.sum() > 122
    for name, rows in (("video", np.concatenate(video)), ("audio", np.concatenate(audio))):
        differs = np.abs(rows[:, None] - rows[None]).max(-1)
        assert differs[~same_file].min() > 1e-5, name
        assert differs[same_file].max() < 1e-4, name      # one file: one embedding, in any batch
    missing = sum(1 for c in subset_manifest.clips if not c.path.exists())
    assert missing == 8


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(subset_dir, subset_train_cache, tmp_path):
    """Extraction processes killed with SIGKILL at random moments once they have begun writing
    (mid-part at times), then a resume, give the uninterrupted cache. The resume runs in this
    process: resuming is not about processes, and each process pays some 8 s of imports."""
    args = ["extract", "--manifest", str(subset_dir / "manifest.csv"), "--split", "train", "--limit", "24",
            "--cache-dir", str(tmp_path), *TINY]
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(2):
        proc = _cli(*args)
        # Kill at a random moment after this run has written 1 or 2 parts (of 6), or let it finish.
        wanted = len(_parts(tmp_path)) + int(rng.integers(1, 3))
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if len(_parts(tmp_path)) >= wanted:
                time.sleep(float(rng.uniform(0, 0.5)))
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.02)
        out, _ = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), out
    assert kills >= 1
    code, out, err = run_cli(*args)
    assert code == 0, out + err
    _assert_same_cache(read_split(tmp_path / "train.h5"), subset_train_cache)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(subset_dir, subset_train_cache, tmp_path):
    reference = subset_train_cache
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(REPO / "cli.py"), "extract",
         "--manifest", str(subset_dir / "manifest.csv"), "--split", "train", "--limit", "24",
         "--cache-dir", str(tmp_path), *TINY],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_same_cache(read_split(tmp_path / "train.h5"), reference)
    assert not list(tmp_path.glob("*/train.parts"))


def test_explicit_shards_then_merge_command(subset_dir, subset_train_cache, tmp_path):
    reference = subset_train_cache
    common = ["extract", "--manifest", str(subset_dir / "manifest.csv"), "--split", "train", "--limit", "24",
              "--cache-dir", str(tmp_path), *TINY]
    code, out, err = run_cli(*common, "--shard", "1/3")
    assert code == 0, out + err
    assert not list(tmp_path.glob("*/train.h5"))      # two shards still to come
    for k in (0, 2):
        code, out, err = run_cli(*common, "--shard", f"{k}/3")
        assert code == 0, out + err
    _assert_same_cache(read_split(tmp_path / "train.h5"), reference)


def test_bad_clips_are_recorded_and_the_rest_written(tmp_path):
    root = tmp_path / "clips"
    root.mkdir()
    write_clip(root / "good_a.mp4", duration=1.0, size=(64, 48))
    write_clip(root / "silent.mp4", duration=1.0, size=(48, 64), audio=False)
    write_clip(root / "good_b.mkv", duration=0.5, size=(33, 17), fps=10)
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(os.urandom(5000))
    good = (root / "good_a.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    write_clip(root / "audio_only.m4a", duration=1.0, video=False)
    names = ["good_a.mp4", "silent.mp4", "good_b.mkv", "empty.mp4", "garbage.mp4", "truncated.mp4",
             "audio_only.m4a", "absent.mp4"]
    (root / "manifest.csv").write_text("path,label,split\n" + "".join(f"{n},x,train\n" for n in names))
    video, audio = _tiny_models()
    summary = extract_split(read_manifest(root / "manifest.csv"), "train", tmp_path / "cache", video, audio,
                            batch_size=3, workers=0)
    cache = read_split(summary.cache_path)
    errors = dict(cache.errors)
    assert {"good_a", "silent", "good_b"} <= set(cache.clip_ids)
    assert {"empty", "garbage", "audio_only", "absent"} <= set(errors)
    assert set(cache.clip_ids) | set(errors) == {Path(n).stem for n in names}
    assert not cache.has_audio[cache.clip_ids.index("silent")]
    assert summary.without_audio >= 1
    assert "no video stream" in errors["audio_only"]
    assert all("\n" not in r and r for r in errors.values())


def test_a_nan_embedding_is_a_clip_error_and_never_cached(tmp_path):
    # A backbone that overflows on one clip (bf16 on a loud clip, a broken checkpoint) gives NaN:
    # that clip is recorded as an error naming the precision hint, the others are cached.
    root = tmp_path / "clips"
    root.mkdir()
    for name in ("a", "b", "c"):
        write_clip(root / f"{name}.mp4", duration=0.5, size=(32, 32))
    (root / "manifest.csv").write_text("path,label,split\n" + "".join(f"{n}.mp4,x,train\n" for n in "abc"))
    video, audio = _tiny_models()
    honest = audio.extract

    def poisoned(modality, inputs, extras):
        out = honest(modality, inputs, extras)
        out["audio"][1, 0] = float("nan")          # the second clip of the batch
        return out

    audio.extract = poisoned
    summary = extract_split(read_manifest(root / "manifest.csv"), "train", tmp_path / "cache", video, audio,
                            batch_size=3, workers=0, precision="bf16")
    cache = read_split(summary.cache_path)
    assert cache.clip_ids == ["a", "c"]
    assert dict(cache.errors) == {"b": "the backbones gave NaN or infinite embeddings (try --precision fp32)"}
    assert np.isfinite(cache.audio).all() and np.isfinite(cache.video).all()


def test_other_settings_make_other_stores_and_overwrite_discards_only_the_named(subset_dir, tmp_path):
    common = ["extract", "--manifest", str(subset_dir / "manifest.csv"), "--split", "val", "--limit", "3",
              "--cache-dir", str(tmp_path), *TINY]
    assert run_cli(*common)[0] == 0
    first = {p: p.read_bytes() for p in tmp_path.glob("*/val.h5")}
    code, out, err = run_cli(*common, "--seed", "1")
    assert code == 0, out + err
    assert len(list(tmp_path.glob("*/val.h5"))) == 4 and all(p.read_bytes() == b for p, b in first.items())
    with pytest.raises(CacheError, match=r"two video encoders in .*: timesformer-\w{8}, timesformer-\w{8}; "
                                         r"pass --video-backbone"):
        open_split(tmp_path, "val")
    # The audio stores differ too (the seed is every backbone's): choose both by id.
    stores = {s.id: s for s in list_stores(tmp_path)}
    seeded = {s.role: s.id for s in stores.values() if s.identity["backbones"][s.role]["seed"] == 1}
    assert open_split(tmp_path, "val", **seeded).backbones["video"]["seed"] == 1
    before = {p: p.stat().st_mtime_ns for p in first}
    code, out, err = run_cli(*common, "--seed", "1", "--overwrite")
    assert code == 0, out + err
    assert "written" in out and {p: p.stat().st_mtime_ns for p in first} == before


@pytest.mark.slow
def test_ctrl_c_stops_after_the_batch_and_resumes(subset_dir, subset_train_cache, tmp_path):
    reference = subset_train_cache
    common = ["extract", "--manifest", str(subset_dir / "manifest.csv"), "--split", "train", "--limit", "24",
              "--cache-dir", str(tmp_path), "--arch", "tiny", "--workers", "2", "--batch-size", "4"]
    proc = _cli(*common, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not _parts(tmp_path):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the whole process group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert not list(tmp_path.glob("*/train.h5"))
    code, out, err = run_cli(*common)       # the resume: in this process (it is not about processes)
    assert code == 0, out + err
    _assert_same_cache(read_split(tmp_path / "train.h5"), reference)


def test_missing_settings_name_the_flag(tmp_path):
    with contextlib.chdir(tmp_path):
        code, out, err = run_cli("extract", "--arch", "tiny")
    assert code == 2
    assert "no manifest: pass --manifest" in out + err


def test_config_file_supplies_the_design_card_command(subset_dir, tmp_path):
    (tmp_path / "alphafuse.toml").write_text(
        f'manifest = "{subset_dir / "manifest.csv"}"\ncache_dir = "cache"\narch = "tiny"\n'
        f'[extract]\nworkers = 0\nlimit = 3\n')
    with contextlib.chdir(tmp_path):
        code, out, err = run_cli("extract", "--split", "val", "--device", "cpu")
    assert code == 0, out + err
    assert read_split(tmp_path / "cache" / "val.h5").clip_ids == \
           [c.clip_id for c in read_manifest(subset_dir / "manifest.csv").split("val")[:3]]
    with pytest.raises(CacheError):
        read_split(tmp_path / "cache" / "train.h5")


# -- one store per encoder: reuse, extract only what is missing -----------------------------------

@pytest.fixture(scope="module")
def six_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("six")
    for i in range(6):
        write_clip(root / f"c{i}.mp4", duration=1.0, fps=10, size=(48, 36), audio=i != 2)
    (root / "manifest.csv").write_text("path,label,split\n" + "".join(f"c{i}.mp4,{'ab'[i % 2]},train\n"
                                                                       for i in range(6)))
    return read_manifest(root / "manifest.csv")


def _dataset_hashes(cache: Path) -> dict:
    """sha256 of every dataset and attribute of every store file: what 'untouched' means."""

    import h5py

    out = {}
    for path in sorted(cache.glob("*/*.h5")):
        out[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        with h5py.File(path) as f:
            f.visititems(lambda name, obj: out.__setitem__(f"{path}:{name}", hashlib.sha256(
                obj[()].tobytes() if obj.dtype.kind != "O" else "\n".join(obj.asstr()[()]).encode()).hexdigest())
                if isinstance(obj, h5py.Dataset) else None)
            out[f"{path}:attrs"] = sorted((k, str(v)) for k, v in f.attrs.items())
    return out


class _Counting:
    """Counts the clips a backbone embeds (its extract calls' batch sizes) and the clips decoded."""

    def __init__(self, monkeypatch, *models):
        import alphafuse.data.dataset as dataset

        self.embedded = {id(m): 0 for m in models}
        self.decoded = 0
        for model in models:
            original = model.extract

            def extract(modality, inputs, extras, _m=model, _f=original):
                key = "audio" if modality == "audio" else "video"
                self.embedded[id(_m)] += len(inputs[key])
                return _f(modality, inputs, extras)
            monkeypatch.setattr(model, "extract", extract)
        real = dataset.load_inputs

        def load_inputs(*args, **kwargs):
            self.decoded += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(dataset, "load_inputs", load_inputs)


def test_adding_an_encoder_reuses_the_finished_stores_byte_for_byte(six_clips, tmp_path, monkeypatch):
    from alphafuse.extract import create_backbone
    from alphafuse.extract.pipeline import format_summary

    video, ast = _tiny_models()
    spy = _Counting(monkeypatch, video, ast)
    first = extract_split(six_clips, "train", tmp_path, video, ast, workers=0, batch_size=4)
    assert spy.decoded == 6                       # two missing stores, one decode of each clip
    assert spy.embedded == {id(video): 6, id(ast): 6}
    assert {s.status for s in first.stores} == {"written"}
    before = _dataset_hashes(tmp_path)

    cavmae = create_backbone("cavmae", arch="tiny", audio_length=128)
    video_again = load_timesformer(arch="tiny")   # the same store: same name, options and weights
    spy = _Counting(monkeypatch, video_again, cavmae)
    second = extract_split(six_clips, "train", tmp_path, video_again, cavmae, workers=0, batch_size=4)
    assert spy.embedded == {id(video_again): 0, id(cavmae): 6}
    assert spy.decoded == 0                       # CAV-MAE's audio only: no video decoded
    status = {s.backbone: s.status for s in second.stores}
    assert status == {"timesformer": "reused", "cavmae": "written"}
    text = format_summary(second)
    assert "timesformer: store" in text and "reused" in text and "cavmae: store" in text
    after = _dataset_hashes(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert len(list(tmp_path.glob("*/train.h5"))) == 3

    mixed = open_split(tmp_path, "train", audio="cavmae")
    paper = open_split(tmp_path, "train", audio="ast")
    np.testing.assert_array_equal(mixed.video, paper.video)
    assert mixed.backbones["audio"]["name"] == "cavmae" and mixed.audio.shape == (6, 64)
    assert list(mixed.has_audio) == [True, True, False, True, True, True]
    # A third run of the pair does nothing at all.
    spy = _Counting(monkeypatch, video_again, cavmae)
    third = extract_split(six_clips, "train", tmp_path, video_again, cavmae, workers=0, batch_size=4)
    assert spy.decoded == 0 and {s.status for s in third.stores} == {"reused"} and _dataset_hashes(tmp_path) == after


def test_a_manifest_edit_brings_a_reused_store_up_to_date(six_clips, tmp_path):
    video, ast = _tiny_models()
    extract_split(six_clips, "train", tmp_path, video, ast, workers=0, limit=4)
    summary = extract_split(six_clips, "train", tmp_path, video, ast, workers=0)   # two more clips
    assert {s.status for s in summary.stores} == {"written"} and summary.skipped == 4
    assert open_split(tmp_path, "train").clip_ids == [f"c{i}" for i in range(6)]


def test_the_extraction_config_is_one_object_validated_once():
    from alphafuse.extract.runner import ExtractConfig

    assert ExtractConfig(layers="3,1").extras.layers == (1, 3)
    for bad, message in (({"batch_size": 0}, "batch size must be an integer >= 1"),
                         ({"precision": "fp8"}, "precision must be one of"),
                         ({"spatial_crops": 2}, "spatial crops must be 1 or 3"),
                         ({"shard": (2, 2)}, "shard index must be in 0..1"),
                         ({"layers": "x"}, "layers must be 'all'")):
        with pytest.raises(ValueError, match=message):
            ExtractConfig(**bad)
    with pytest.raises(TypeError, match="not both"):
        extract_split(None, "train", "x", config=ExtractConfig(), workers=0)
