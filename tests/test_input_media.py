"""Awkward media is one clip error with a reason, or embeds, for every backbone family: never a
crash, a traceback, or a run that stops. TSAM's audio (first channel at the file's own rate)
is the most fragile: 7.1 audio crashed PyAV, rates and lengths its fixed FFT cannot take raised."""
import json

import numpy as np
import pytest
import torch

from alphafuse.cache import read_split
from alphafuse.data import ClipError, load_inputs, read_manifest
from alphafuse.data.synth import write_clip
from alphafuse.extract.tsam_inputs import decode_first_channel, load_tsam_spectrogram
from alphafuse.extract import create_backbone
from alphafuse.extract.registry import Extras
from alphafuse.extract.embed import Roles, embed_inputs
from alphafuse.extract.runner import extract_split
from alphafuse.fuse import TrainConfig, fuse_run
from tests.inprocess import run_cli

SMALL = (32, 24)
# name: write_clip arguments. Sizes small enough for seconds; 8000x8000 was checked by hand
# (every family embeds it, 3.3 GB peak), 3840x2160 is in tests/media.py's corpus.
MEDIA = {
    "big.mp4": dict(size=(1920, 1920), duration=0.12, video_options={"preset": "ultrafast"}),
    "px1.mkv": dict(size=(1, 1), video_codec="ffv1", audio_codec="pcm_s16le"),
    "s71.mkv": dict(size=SMALL, channels="7.1", sample_rate=48000),
    "r192.mkv": dict(size=SMALL, sample_rate=192000, audio_codec="pcm_s16le", video_codec="ffv1"),
    "ms20.mp4": dict(size=SMALL, duration=1.0, audio_duration=0.02),
    "vfr.mkv": dict(size=SMALL, frame_times=[0, 0.04, 0.2, 0.21, 0.5, 1.3]),
}
# What TSAM's fixed 4800-point FFT cannot take (extract/tsam_inputs.py): the clip errors expected.
TSAM_REFUSES = {"r192.mkv": "does not fit n_fft=4800 at sample_rate=192000",
                "ms20.mp4": "is too short"}
FAMILIES = {"timesformer": {"video": "timesformer", "audio": "ast"}, "cavmae": {"audiovisual": "cavmae"},
            "tsm": {"video": "tsm", "audio": "ast"}, "tsam": {"audiovisual": "tsam"}}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    for name, kwargs in MEDIA.items():
        write_clip(root / name, **kwargs)
    return root


def test_tsam_reads_the_first_of_eight_channels_exactly(media, tmp_path):
    # synth's chord: channel c is 0.3 sin(2 pi 440 (c + 1) t); PCM keeps it to 16-bit rounding.
    path = write_clip(tmp_path / "s71.mkv", size=SMALL, duration=0.5, channels="7.1", sample_rate=48000,
                      audio_codec="pcm_s16le", video_codec="ffv1")
    wave, rate, has_audio = decode_first_channel(path)
    t = np.arange(len(wave)) / rate
    assert rate == 48000 and has_audio and len(wave) == 24000
    assert np.abs(wave.numpy() - 0.3 * np.sin(2 * np.pi * 440 * t)).max() < 2 / 32768
    image, has_audio = load_tsam_spectrogram(media / "s71.mkv")
    assert image.shape == (3, 224, 224) and torch.isfinite(image).all() and has_audio


@pytest.mark.parametrize("name", sorted(TSAM_REFUSES))
def test_tsam_audio_it_cannot_take_is_a_clip_error(media, name):
    with pytest.raises(ClipError, match=f"^{name.split('.')[0]}: TSAM's audio image: .*{TSAM_REFUSES[name]}"):
        load_tsam_spectrogram(media / name)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_embeds_awkward_media_or_names_the_clip(media, family):
    roles = Roles({role: create_backbone(name, None, arch="tiny") for role, name in FAMILIES[family].items()})
    specs = roles.specs()
    for name in MEDIA:
        expected = TSAM_REFUSES.get(name) if family == "tsam" else None
        try:
            clip = load_inputs(media / name, specs["video"], specs["audio"])
        except ClipError as exc:
            assert expected is not None and expected in exc.reason, (family, name, exc.reason)
            continue
        assert expected is None, (family, name, "embedded a clip it should refuse")
        out = embed_inputs(roles, {"video": clip.video[None], "audio": clip.fbank[None]}, Extras())
        assert out and all(torch.isfinite(v).all() for v in out.values()), (family, name)


def _good_clips(root, n=4):
    for i in range(n):
        write_clip(root / f"good{i}.mp4", size=SMALL, duration=1.0, fps=10,
                   frame_fn=lambda k, i=i: np.full((SMALL[1], SMALL[0], 3), 40 * i + 5 * k, np.uint8))
    return [f"good{i}.mp4" for i in range(n)]


@pytest.mark.slow
def test_tsam_extraction_and_predict_with_bad_clips_among_good(media, tmp_path, capfd):
    # In a DataLoader worker (workers=1), as the extract command runs: 7.1 audio once killed the
    # worker with a segmentation fault and ended the run; 192 kHz and 20 ms printed tracebacks.
    import shutil

    good = _good_clips(tmp_path)
    for name in ("s71.mkv", "r192.mkv", "ms20.mp4"):
        shutil.copy(media / name, tmp_path / name)
    rows = [f"{g},{'ab'[i % 2]},train" for i, g in enumerate(good)]
    rows += ["s71.mkv,a,train", "r192.mkv,b,train", "ms20.mp4,a,train"]
    (tmp_path / "m.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    manifest = read_manifest(tmp_path / "m.csv")
    tsam = create_backbone("tsam", None, arch="tiny", num_segments=2, shift_depth=1)
    summary = extract_split(manifest, "train", tmp_path / "cache", backbone=tsam, batch_size=3, workers=1)
    features = read_split(summary.cache_path)
    assert sorted(features.clip_ids) == ["good0", "good1", "good2", "good3", "s71"]
    errors = dict(features.errors)
    assert sorted(errors) == ["ms20", "r192"]
    assert TSAM_REFUSES["r192.mkv"] in errors["r192"] and TSAM_REFUSES["ms20.mp4"] in errors["ms20"]
    assert "Traceback" not in capfd.readouterr().err

    fuse_run(features, None, None, TrainConfig(epochs=1, hidden=(8,)), tmp_path / "run")
    files = [str(tmp_path / n) for n in ("good0.mp4", "r192.mkv", "s71.mkv", "good1.mp4")]
    code, out, err = _cli(["predict", *files, "--run", str(tmp_path / "run"), "--json", "--device", "cpu"])
    assert code == 1 and "Traceback" not in err, err
    results = json.loads(out)
    assert [r["path"] for r in results] == files
    assert TSAM_REFUSES["r192.mkv"] in results[1]["error"]
    for r in (results[0], results[2], results[3]):
        assert "error" not in r and 0.99 < sum(t["probability"] for t in r["top"]) < 1.01
    code, out, err = _cli(["predict", files[1], files[0], "--run", str(tmp_path / "run"), "--device", "cpu"])
    lines = out.splitlines()
    assert code == 1 and lines[0].startswith(f"{files[1]}: ERROR ") and lines[1] == files[0]


def _cli(args):
    """The console entry point in this process: exit code, stdout, stderr."""
    return run_cli(*args, traceback_ok=True)
