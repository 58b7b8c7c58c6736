"""hf snapshots as a new user runs them: extract (real clips), cache, fuse, predict, from the CLI.

Also: the processor specs give exactly what the snapshot's processor gives on the same decoded
frames and waveform, and round-trip through the cache's preprocessing record.
"""
import json

import numpy as np
import pytest
import torch

from tests.hf_snapshots import build
from tests.inprocess import run_cli


@pytest.fixture(scope="module")
def snaps(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfcli")
    return {kind: (root / kind, build(kind, root / kind)) for kind in ("videomae", "ast", "wav2vec2")}


def _cli(args):
    """The console entry point in this process: exit code, stdout, stderr (never a traceback)."""
    return run_cli(*args)


@pytest.fixture(scope="module")
def clips(subset_dir, tmp_path_factory):
    """A small manifest of real clips: 6 train, 2 val."""
    lines = (subset_dir / "manifest.csv").read_text().splitlines()[1:]
    import csv
    rows = list(csv.reader(lines))
    train = [r for r in rows if r[2] == "train"][:6]
    val = [r for r in rows if r[2] == "val"][:2]
    folder = tmp_path_factory.mktemp("clips")
    with open(folder / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for p, label, split in train + val:
            w.writerow([subset_dir / p, label, split])
    return folder / "m.csv"


@pytest.mark.slow
def test_extract_fuse_predict_with_videomae_and_ast(snaps, clips, tmp_path):
    from alphafuse.cache import read_split
    video, audio = snaps["videomae"][0], snaps["ast"][0]
    code, out, err = _cli(["extract", "--manifest", clips, "--cache-dir", tmp_path / "cache", "--video-backbone", "hf",
                           "--video-checkpoint", video, "--audio-backbone", "hf", "--audio-checkpoint", audio,
                           "--workers", "0", "--batch-size", "4", "--device", "cpu"])
    assert code == 0, err
    train = read_split(tmp_path / "cache" / "train.h5")
    assert train.video.shape == (6, 32) and train.audio.shape == (6, 32)
    described = train.backbones["video"]
    assert described["name"] == "hf" and described["config"]["model_type"] == "videomae"
    assert described["config"]["snapshot"] == "videomae" and train.backbones["audio"]["config"]["model_type"] == \
        "audio-spectrogram-transformer"

    # the cached rows are load_hf(...).embed on the processor's output for the decoded clip
    from alphafuse.extract.hf_inputs import decode_rgb_frames
    from alphafuse.data.manifest import read_manifest
    from alphafuse.extract import load_hf
    enc = load_hf(video)
    clip = read_manifest(clips).split("train")[0]
    pixels = enc.processor(decode_rgb_frames(clip.path, 4), return_tensors="pt")
    row = train.clip_ids.index(clip.clip_id) if isinstance(train.clip_ids, list) else list(train.clip_ids).index(clip.clip_id)
    assert np.allclose(train.video[row], enc.embed(**pixels)["pooled"][0].numpy(), atol=1e-5)

    code, out, err = _cli(["fuse", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "run", "--epochs", "2",
                           "--hidden", "8"])
    assert code == 0, err
    code, out, err = _cli(["predict", clip.path, "--run", tmp_path / "run", "--top-k", "2", "--json",
                           "--device", "cpu"])
    assert code == 0, err
    result = json.loads(out)
    assert len(result[0]["top"]) == 2


@pytest.mark.slow
def test_extract_with_a_wav2vec2_audio_encoder_and_the_wrong_role(snaps, clips, tmp_path):
    from alphafuse.cache import read_split
    code, out, err = _cli(["extract", "--manifest", clips, "--cache-dir", tmp_path / "cache", "--split", "val",
                           "--video-backbone", "hf", "--video-checkpoint", snaps["videomae"][0],
                           "--audio-backbone", "hf", "--audio-checkpoint", snaps["wav2vec2"][0],
                           "--workers", "0", "--device", "cpu"])
    assert code == 0, err
    val = read_split(tmp_path / "cache" / "val.h5")
    assert val.audio.shape == (2, 16)        # the classifier's projector width
    # an audio snapshot given as the video backbone: one line saying what it is
    code, out, err = _cli(["extract", "--manifest", clips, "--cache-dir", tmp_path / "c2", "--video-backbone", "hf",
                           "--video-checkpoint", snaps["ast"][0], "--audio-backbone", "ast", "--backbone-opt", "ast.arch=tiny",
                           "--workers", "0", "--device", "cpu"])
    lines = [x for x in err.splitlines() if x.startswith("Error")]
    assert code != 0 and len(lines) == 1 and "audio encoder: it cannot encode video" in lines[0]
    code, out, err = _cli(["extract", "--manifest", clips, "--cache-dir", tmp_path / "c3", "--video-backbone", "hf",
                           "--video-checkpoint", tmp_path, "--workers", "0", "--device", "cpu"])
    lines = [x for x in err.splitlines() if x.startswith("Error")]
    assert code != 0 and len(lines) == 1 and f"{tmp_path}: no config.json" in lines[0]


def test_specs_equal_the_processor_on_the_same_decoded_input(snaps, clips):
    from alphafuse.data.audio import decode_audio
    from alphafuse.extract.hf_inputs import decode_rgb_frames
    from alphafuse.data.manifest import read_manifest
    from alphafuse.extract.registry import spec_from_dict
    from alphafuse.extract import load_hf
    path = read_manifest(clips).split("train")[0].path

    enc = load_hf(snaps["videomae"][0])
    spec = enc.input_specs("video")["video"]
    frames = decode_rgb_frames(path, 4)
    want = enc.processor(frames, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(spec.load(path, "c"), want)
    import alphafuse.extract.hf_inputs as hp
    hp._PROCESSORS.clear()          # rebuilt from the recorded configuration alone, as in a worker or predict
    again = spec_from_dict("video", json.loads(json.dumps(spec.to_dict())))
    assert again == spec and torch.equal(again.load(path, "c"), want)
    assert again.processor is not enc.processor

    for kind in ("ast", "wav2vec2"):
        enc = load_hf(snaps[kind][0])
        spec = enc.input_specs("audio")["audio"]
        wave, has_audio = decode_audio(path, spec.sampling_rate)     # the AST path: 16-bit down-mix
        kwargs = dict(padding="max_length", max_length=spec.max_samples, truncation=True) if spec.max_samples else {}
        want = enc.processor(wave[0].numpy(), sampling_rate=spec.sampling_rate, return_tensors="pt", **kwargs)
        packed, flag = spec.load(path, "c")
        assert flag == has_audio
        got = spec.model_inputs(packed[None])
        assert sorted(got) == sorted(want)
        for key in want:
            assert torch.equal(got[key], want[key]), key
        hp._PROCESSORS.clear()
        again = spec_from_dict("audio", json.loads(json.dumps(spec.to_dict())))
        assert again == spec and torch.equal(again.load(path, "c")[0], packed)
