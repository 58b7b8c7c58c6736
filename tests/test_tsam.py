"""TSAM: its saved checkpoint layout loads strictly and gives the reference VCM's numbers."""
import json

import pytest
import torch

from alphafuse.extract import CheckpointError, create_backbone, load_tsam, tsam_options_from_config
from alphafuse.extract.checkpoint import read_checkpoint
from alphafuse.extract.tsam import PREPROCESSING
from alphafuse.extract.tsm import temporal_shift
from tests.tsm_reference import (naive_tsam_shift, save_tsam_checkpoint, save_tsm_checkpoint, tsam_model_state,
                                 tsam_reference, tsm_state)

TOL = 1e-5

# config/kinetics400_config.json of aav-antonov/TSAM, model-related sections as published.
KINETICS400_CONFIG = {
    "data_augmentation": {"audio_image_param": {"window_sizes": [25, 50, 100], "hop_sizes": [10, 25, 50],
                                                "n_mels": 224, "eps": 1e-6, "spec_size": [3, 224, 224],
                                                "num_segments": 1, "m_segments": 1}},
    "model": {"video_segments": 16, "audio_segments": 1, "arch": "resnet50_timm", "pretrain": "imagenet",
              "dropout": 0.5},
    "shift_temporal": {"status": True, "f_div": 4, "shift_depth": 4, "n_insert": 2, "m_insert": 0},
    "training_param": {"epochs": 50, "batch_size": 64, "num_workers": 20},
}


def _inputs(b, t, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(b, 3, t, size, size, generator=g)              # ToTensor output, no mean/std
    spectrogram = 4 * torch.randn(b, 3, size, size, generator=g) - 6  # raw log-mel values
    return frames, spectrogram


def _close(ours, ref, tol):
    """Max abs difference below ``tol`` times the reference's scale (at least 1): float32
    rounding grows with the values, and log-mel inputs make features of ~10."""
    assert ours.shape == ref.shape
    err, scale = (ours - ref).abs().max().item(), max(1.0, ref.abs().max().item())
    assert err < tol * scale, f"max abs difference {err:.3g} >= {tol} * {scale:.3g}"


@pytest.mark.parametrize("t, depth, f_div, n_insert, m_insert", [
    (16, 4, 4, 2, 0),      # the published Kinetics-400 configuration
    (5, 2, 4, 2, 1),
    (4, 1, 8, 1, 0),       # every block, depth 1 (TSM's distance, TSAM's boundary rule)
    (3, 3, 2, 3, 2),       # depth as large as the video segments allow
])
def test_saved_checkpoint_matches_reference_vcm(tmp_path, t, depth, f_div, n_insert, m_insert):
    state = tsam_model_state(n_insert=n_insert, m_insert=m_insert, seed=t)
    save_tsam_checkpoint(tmp_path / "unbalanced_best.ckpt.pth.tar", state)
    model = load_tsam(tmp_path / "unbalanced_best.ckpt.pth.tar", num_segments=t, shift_depth=depth, f_div=f_div,
                      n_insert=n_insert, m_insert=m_insert, arch="tiny")
    frames, spec = _inputs(2, t, 64, seed=t)
    video, audio, logits = tsam_reference(state, frames, spec, f_div, depth, n_insert, m_insert)
    e = model.embed(frames, spec)
    _close(e["video"], video, TOL)
    _close(e["audio"], audio, TOL)
    _close(model.classify(frames, spec), logits, TOL)
    assert torch.equal(model.classify(frames, spec), model.classify_from_embeddings(e["video"], e["audio"]))


def test_reference_comparison_sees_the_shift_rules(tmp_path):
    # Sensitivity of the test above: TSM's zero ends, or a shifted audio segment, give other numbers.
    state = tsam_model_state(seed=3)
    save_tsam_checkpoint(tmp_path / "m.ckpt.pth.tar", state)
    model = load_tsam(tmp_path / "m.ckpt.pth.tar", num_segments=6, shift_depth=2, arch="tiny")
    frames, spec = _inputs(1, 6, 48, seed=3)
    ours = model.embed(frames, spec)["video"]
    x = torch.randn(2 * 7, 64, 3, 3, generator=torch.Generator().manual_seed(0))
    kept = temporal_shift(x, 7, 64 // 4 // 2, depth=2, n_shifted=6, zero_ends=False)
    assert torch.equal(kept, naive_tsam_shift(x, 7, 6, 4, 2))
    assert not torch.equal(kept, temporal_shift(x, 7, 8, depth=2, n_shifted=6, zero_ends=True))
    assert not torch.equal(kept, temporal_shift(x, 7, 8, depth=2, n_shifted=7, zero_ends=False))
    assert (model.embed(frames.flip(2), spec)["video"] - ours).abs().max() > 1e-4  # segment order matters


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("zero_ends", [False, True])
def test_depth_shift_matches_naive_loop(depth, zero_ends):
    n_video, c = 6, 40
    x = torch.randn(3 * (n_video + 1), c, 2, 3, generator=torch.Generator().manual_seed(depth))
    fold = (c // 4) // depth
    ours = temporal_shift(x, n_video + 1, fold, depth, n_video, zero_ends)
    want = naive_tsam_shift(x, n_video + 1, n_video, 4, depth)
    if zero_ends:  # TSM's rule: where nothing arrives, zeros instead of the old values
        want = want.view(3, n_video + 1, c, 2, 3).clone()
        for d in range(depth):
            want[:, n_video - d - 1:n_video, 2 * d * fold:(2 * d + 1) * fold] = 0
            want[:, :d + 1, (2 * d + 1) * fold:(2 * d + 2) * fold] = 0
        want = want.view_as(x)
    assert torch.equal(ours, want)
    audio = x.view(3, n_video + 1, c, 2, 3)[:, -1]
    assert torch.equal(ours.view(3, n_video + 1, c, 2, 3)[:, -1], audio)  # the audio segment is untouched
    cl = temporal_shift(x.contiguous(memory_format=torch.channels_last), n_video + 1, fold, depth, n_video, zero_ends)
    assert torch.equal(cl, ours)


def test_audio_embedding_does_not_depend_on_the_video(tmp_path):
    state = tsam_model_state(seed=4)
    save_tsam_checkpoint(tmp_path / "m.ckpt.pth.tar", state)
    model = load_tsam(tmp_path / "m.ckpt.pth.tar", num_segments=4, arch="tiny")
    frames, spec = _inputs(2, 4, 64, seed=4)
    other, _ = _inputs(2, 4, 64, seed=5)
    a, b = model.embed(frames, spec), model.embed(other, spec)
    _close(a["audio"], b["audio"], 1e-6)
    assert (a["video"] - b["video"]).abs().max() > 1e-3


def test_numpy_scores_in_data_state_load_safely(tmp_path, caplog):
    # NumPy scores beside the weights are on the allow-list: no full unpickling is needed.
    state = tsam_model_state(seed=6)
    save_tsam_checkpoint(tmp_path / "balanced.ckpt.pth.tar", state, numpy_scores=True)
    model = load_tsam(tmp_path / "balanced.ckpt.pth.tar", num_segments=2, shift_depth=1, arch="tiny")
    assert "full unpickling" not in caplog.text
    flat = read_checkpoint(tmp_path / "balanced.ckpt.pth.tar")
    assert "nn_backbone.base_model.layer1.0.conv1.layer.weight" in flat and "last_fc.bias" in flat
    assert model.config["num_classes"] == 400 and model.pretrained


def test_plain_state_dict_round_trip(tmp_path):
    source = load_tsam(num_segments=3, shift_depth=2, arch="tiny", seed=2)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    loaded = load_tsam(tmp_path / "plain.pt", num_segments=3, shift_depth=2, arch="tiny")
    frames, spec = _inputs(1, 3, 40)
    assert torch.equal(loaded.classify(frames, spec), source.classify(frames, spec))


def test_wrong_insert_pattern_is_named(tmp_path):
    save_tsam_checkpoint(tmp_path / "m.ckpt.pth.tar", tsam_model_state(n_insert=2, m_insert=1))
    with pytest.raises(CheckpointError, match=r"missing keys \(base_model\.layer1\.0\.conv1\.layer\.weight.*"
                                              r"shifts blocks layer1\.1, layer2\.1.*n_insert=2, m_insert=0"):
        load_tsam(tmp_path / "m.ckpt.pth.tar", arch="tiny")


def test_missing_key_is_named(tmp_path):
    state = tsam_model_state()
    del state["nn_backbone"]["base_model.layer2.1.bn2.running_var"]
    save_tsam_checkpoint(tmp_path / "m.ckpt.pth.tar", state)
    with pytest.raises(CheckpointError, match=r"m\.ckpt\.pth\.tar does not fit TSAM.*missing keys "
                                              r"\(base_model\.layer2\.1\.bn2\.running_var\)"):
        load_tsam(tmp_path / "m.ckpt.pth.tar", arch="tiny")


def test_tsm_and_tsam_files_swapped(tmp_path):
    save_tsm_checkpoint(tmp_path / "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth", tsm_state())
    with pytest.raises(CheckpointError, match="does not fit TSAM.*looks like a TSM checkpoint: use load_tsm"):
        load_tsam(tmp_path / "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth", arch="tiny")
    from alphafuse.extract import load_tsm
    save_tsam_checkpoint(tmp_path / "tsam.ckpt.pth.tar", tsam_model_state())
    with pytest.raises(CheckpointError, match=r"tsam\.ckpt\.pth\.tar does not fit TSM.*missing keys.*"
                                              r"unexpected keys.*looks like a TSAM checkpoint: use load_tsam"):
        load_tsm(tmp_path / "tsam.ckpt.pth.tar", arch="tiny")
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.tar: checkpoint file is empty"):
        load_tsam(tmp_path / "empty.tar", arch="tiny")


def test_bad_options_and_inputs_are_named():
    with pytest.raises(ValueError, match=r"shift_depth must be an integer in \[1, 4\], got 5"):
        load_tsam(num_segments=4, shift_depth=5, arch="tiny")
    with pytest.raises(ValueError, match=r"m_insert must be an integer in \[0, 1\], got 2"):
        load_tsam(m_insert=2, arch="tiny")
    model = load_tsam(num_segments=2, shift_depth=1, arch="tiny")
    frames, spec = _inputs(2, 2, 64)
    with pytest.raises(ValueError, match=r"spectrogram of shape \(2, 3, 64, 64\).*got \(2, 1, 64, 64\)"):
        model.embed(frames, spec[:, :1])


def test_options_from_the_published_config(tmp_path):
    (tmp_path / "kinetics400_config.json").write_text(json.dumps(KINETICS400_CONFIG))
    options = tsam_options_from_config(tmp_path / "kinetics400_config.json")
    assert options == dict(num_segments=16, arch="base", f_div=4, shift_depth=4, n_insert=2, m_insert=0)
    tiny = create_backbone("tsam", None, **{**options, "arch": "tiny", "num_segments": 4})
    assert tiny.embedding_shapes() == {"video": (512,), "audio": (512,)}
    bad = json.loads(json.dumps(KINETICS400_CONFIG))
    bad["shift_temporal"]["shift_dept"] = 2
    with pytest.raises(ValueError, match="section 'shift_temporal' has unknown keys shift_dept; known: "):
        tsam_options_from_config(bad)
    bad = json.loads(json.dumps(KINETICS400_CONFIG))
    bad["model"]["audio_segments"] = 0      # something_v1_config.json: video only
    with pytest.raises(ValueError, match="audio_segments must be 1.*got 0"):
        tsam_options_from_config(bad)
    assert PREPROCESSING["audio"]["n_mels"] == KINETICS400_CONFIG["data_augmentation"]["audio_image_param"]["n_mels"]


@pytest.mark.slow
def test_base_resnet50_kinetics400_layout(tmp_path):
    state = tsam_model_state(width=64, layers=(3, 4, 6, 3), seed=9)
    save_tsam_checkpoint(tmp_path / "resnet50_kinetics400.ckpt.pth.tar", state)
    model = load_tsam(tmp_path / "resnet50_kinetics400.ckpt.pth.tar")
    frames, spec = _inputs(1, 16, 160, seed=9)   # 160 px: the arithmetic is the same, half the cost of 224
    video, audio, logits = tsam_reference(state, frames, spec)
    e = model.embed(frames, spec)
    assert e["video"].shape == e["audio"].shape == (1, 2048)
    _close(e["video"], video, 1e-4)
    _close(e["audio"], audio, 1e-4)
    _close(model.classify_from_embeddings(e["video"], e["audio"]), logits, 1e-4)
