"""Stage 1 end to end: extraction into HDF5, with kills, resumes, shards and bad clips."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alphafuse.cache import CacheError, read_split
from alphafuse.data import read_manifest
from alphafuse.data.synth import write_clip
from alphafuse.extract import load_ast, load_timesformer
from alphafuse.extract.runner import extract_split
from tests.paths import REPO

TINY = ["--arch", "tiny", "--workers", "0", "--batch-size", "4"]


def _cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], cwd=kwargs.pop("cwd", REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _tiny_models():
    return load_timesformer(arch="tiny"), load_ast(arch="tiny")


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
def subset_train_cache(subset_manifest, tmp_path_factory):
    """The first 24 train clips (2 of them absent on disk) of the real subset, extracted uninterrupted."""
    out = tmp_path_factory.mktemp("reference")
    video, audio = _tiny_models()
    summary = extract_split(subset_manifest, "train", out, video, audio, batch_size=8, workers=2, limit=24)
    return read_split(summary.cache_path), summary


def test_every_real_clip_once_and_absent_ones_as_errors(subset_manifest, tmp_path):
    video, audio = _tiny_models()
    for split in subset_manifest.splits:
        summary = extract_split(subset_manifest, split, tmp_path, video, audio, batch_size=8, workers=2)
        cache = read_split(summary.cache_path)
        clips = subset_manifest.split(split)
        present = [c.clip_id for c in clips if c.path.exists()]
        absent = {c.clip_id for c in clips if not c.path.exists()}
        assert cache.clip_ids == present
        assert {e[0] for e in cache.errors} == absent
        assert all("not found" in reason for _, reason in cache.errors)
        assert np.isfinite(cache.video).all() and np.isfinite(cache.audio).all()
        assert cache.video.shape == (len(present), 64) and cache.audio.shape == (len(present), 64)
        assert [subset_manifest.label_names[i] for i in cache.labels] == \
               [c.label for c in clips if c.path.exists()]
        assert cache.backbones["video"]["config"]["arch"] == "tiny"
    missing = sum(1 for c in subset_manifest.clips if not c.path.exists())
    assert missing == 8


def test_sigkill_and_resume_equals_uninterrupted(subset_dir, subset_train_cache, tmp_path):
    reference, _ = subset_train_cache
    args = ["extract", "--manifest", str(subset_dir / "manifest.csv"), "--split", "train", "--limit", "24",
            "--cache-dir", str(tmp_path), *TINY]
    parts = tmp_path / "train.parts"
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(12):
        proc = _cli(*args)
        # Kill at a random moment after this run has started writing (or let it finish).
        wanted = len(list(parts.glob("part-*.h5"))) + int(rng.integers(1, 3)) if parts.exists() else 1
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if parts.exists() and len(list(parts.glob("part-*.h5"))) >= wanted:
                time.sleep(float(rng.uniform(0, 0.5)))
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.02)
        proc.wait()
        if proc.returncode == 0:
            break
    assert kills >= 1
    assert proc.returncode == 0, proc.stdout.read()
    _assert_same_cache(read_split(tmp_path / "train.h5"), reference)


def test_torchrun_two_processes_equal_one(subset_dir, subset_train_cache, tmp_path):
    reference, _ = subset_train_cache
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(REPO / "cli.py"), "extract",
         "--manifest", str(subset_dir / "manifest.csv"), "--split", "train", "--limit", "24",
         "--cache-dir", str(tmp_path), *TINY],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_same_cache(read_split(tmp_path / "train.h5"), reference)
    assert not (tmp_path / "train.parts").exists()


def test_explicit_shards_then_merge_command(subset_dir, subset_train_cache, tmp_path):
    reference, _ = subset_train_cache
    common = ["extract", "--manifest", str(subset_dir / "manifest.csv"), "--split", "train", "--limit", "24",
              "--cache-dir", str(tmp_path), *TINY]
    first = _cli(*common, "--shard", "1/3")
    assert first.wait() == 0, first.stdout.read()
    assert not (tmp_path / "train.h5").exists()      # two shards still to come
    for k in (0, 2):
        proc = _cli(*common, "--shard", f"{k}/3")
        assert proc.wait() == 0, proc.stdout.read()
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


def test_resume_with_other_backbones_is_refused(subset_dir, tmp_path):
    common = ["extract", "--manifest", str(subset_dir / "manifest.csv"), "--split", "val", "--limit", "3",
              "--cache-dir", str(tmp_path), *TINY]
    assert _cli(*common).wait() == 0
    proc = _cli(*common, "--seed", "1")
    assert proc.wait() == 1
    out = proc.stdout.read()
    assert "other backbones" in out and "--overwrite" in out
    proc = _cli(*common, "--seed", "1", "--overwrite")
    assert proc.wait() == 0, proc.stdout.read()
    assert read_split(tmp_path / "val.h5").backbones["video"]["seed"] == 1


def test_ctrl_c_stops_after_the_batch_and_resumes(subset_dir, subset_train_cache, tmp_path):
    reference, _ = subset_train_cache
    common = ["extract", "--manifest", str(subset_dir / "manifest.csv"), "--split", "train", "--limit", "24",
              "--cache-dir", str(tmp_path), "--arch", "tiny", "--workers", "2", "--batch-size", "4"]
    proc = _cli(*common, start_new_session=True)
    parts = tmp_path / "train.parts"
    deadline = time.time() + 120
    while time.time() < deadline and not (parts.exists() and list(parts.glob("part-*.h5"))):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the whole process group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert not (tmp_path / "train.h5").exists()
    assert _cli(*common).wait() == 0
    _assert_same_cache(read_split(tmp_path / "train.h5"), reference)


def test_missing_settings_name_the_flag(tmp_path):
    proc = _cli("extract", "--arch", "tiny", cwd=tmp_path)
    assert proc.wait() == 2
    assert "no manifest: pass --manifest" in proc.stdout.read()


def test_config_file_supplies_the_design_card_command(subset_dir, tmp_path):
    (tmp_path / "alphafuse.toml").write_text(
        f'manifest = "{subset_dir / "manifest.csv"}"\ncache_dir = "cache"\narch = "tiny"\n'
        f'[extract]\nworkers = 0\nlimit = 3\n')
    proc = _cli("extract", "--split", "val", "--device", "cpu", cwd=tmp_path)
    out = proc.stdout.read()
    assert proc.wait() == 0, out
    assert read_split(tmp_path / "cache" / "val.h5").clip_ids == \
           [c.clip_id for c in read_manifest(subset_dir / "manifest.csv").split("val")[:3]]
    with pytest.raises(CacheError):
        read_split(tmp_path / "cache" / "train.h5")
