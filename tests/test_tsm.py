"""TSM: the published checkpoint layout loads strictly and gives the reference TSN's numbers."""
import pytest
import torch

from alphafuse.extract import CheckpointError, create_backbone, load_tsm, tsm_options_from_filename
from alphafuse.extract.tsm import PREPROCESSING, temporal_shift
from tests.checkpoints import ast_state, save_pyth, timesformer_state
from tests.tsm_reference import naive_tsm_shift, save_tsm_checkpoint, tsm_reference, tsm_state

TOL = 1e-5
NAME = "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth"


def _frames(b, t, size, seed=0):
    return torch.randn(b, 3, t, size, size, generator=torch.Generator().manual_seed(seed))


def _close(ours, ref, tol):
    """Max abs difference below ``tol`` times the reference's scale (at least 1): float32
    rounding grows with the values, and log-mel inputs make features of ~10."""
    assert ours.shape == ref.shape
    err, scale = (ours - ref).abs().max().item(), max(1.0, ref.abs().max().item())
    assert err < tol * scale, f"max abs difference {err:.3g} >= {tol} * {scale:.3g}"


@pytest.fixture
def tiny_ckpt(tmp_path):
    sd = tsm_state(seed=1)
    save_tsm_checkpoint(tmp_path / NAME, sd)
    return tmp_path / NAME, sd


@pytest.mark.parametrize("t", [4, 1])
def test_official_checkpoint_matches_reference_tsn(tiny_ckpt, t):
    path, sd = tiny_ckpt
    model = load_tsm(path, num_segments=t, arch="tiny")
    frames = _frames(2, t, 64)
    ref_embed, ref_logits = tsm_reference(sd, frames)
    _close(model.embed(frames)["video"], ref_embed, TOL)
    _close(model.classify(frames), ref_logits, TOL)
    assert model.pretrained and model.fingerprint.startswith("sha256:")
    if t > 1:  # the comparison can see a missing or misplaced shift
        _, unshifted = tsm_reference(sd, frames, shift=False)
        assert (unshifted - ref_logits).abs().max() > 100 * TOL


def test_segments_of_different_clips_do_not_mix(tiny_ckpt):
    model = load_tsm(tiny_ckpt[0], num_segments=4, arch="tiny")
    frames = _frames(3, 4, 48, seed=2)
    together = model.embed(frames)["video"]
    alone = torch.cat([model.embed(frames[i:i + 1])["video"] for i in range(3)])
    _close(together, alone, 1e-6)
    assert (model.embed(frames.flip(2))["video"] - together).abs().max() > 1e-4  # segment order matters


@pytest.mark.parametrize("shape", [(2 * 8, 32, 5, 5), (3 * 3, 16, 2, 3), (1, 24, 4, 4), (2 * 5, 7, 3, 3)])
def test_shift_matches_naive_loop(shape):
    n_segment = {16: 8, 9: 3, 1: 1, 10: 5}[shape[0]]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    want = naive_tsm_shift(x, n_segment, 8)
    assert torch.equal(temporal_shift(x, n_segment, shape[1] // 8), want)
    cl = temporal_shift(x.contiguous(memory_format=torch.channels_last), n_segment, shape[1] // 8)
    assert torch.equal(cl, want)


def test_channels_last_as_loaded_and_nchw_agree(tiny_ckpt):
    model = load_tsm(tiny_ckpt[0], num_segments=4, arch="tiny")
    assert model.base_model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    frames = _frames(2, 4, 64, seed=3)
    channels_last = model.embed(frames)["video"]
    model.to(memory_format=torch.contiguous_format)
    _close(model.embed(frames)["video"], channels_last, TOL)


def test_dropout_zero_layout_and_other_class_counts(tmp_path):
    # TSN(dropout=0) keeps its classifier as base_model.fc; Something-Something has 174 classes.
    sd = tsm_state(num_classes=174, dropout=False, seed=4)
    save_tsm_checkpoint(tmp_path / "sth.pth", sd)
    model = load_tsm(tmp_path / "sth.pth", num_segments=2, arch="tiny")
    frames = _frames(1, 2, 64, seed=4)
    _close(model.classify(frames), tsm_reference(sd, frames)[1], TOL)
    assert model.classify(frames).shape == (1, 174) and model.config["num_classes"] == 174


def test_plain_state_dict_round_trip(tmp_path):
    source = load_tsm(num_segments=3, arch="tiny", seed=5)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    loaded = load_tsm(tmp_path / "plain.pt", num_segments=3, arch="tiny")
    frames = _frames(2, 3, 40)
    assert torch.equal(loaded.classify(frames), source.classify(frames))


def test_missing_key_is_named(tmp_path):
    sd = tsm_state()
    del sd["module.base_model.layer3.1.conv1.net.weight"]
    save_tsm_checkpoint(tmp_path / "broken.pth", sd)
    with pytest.raises(CheckpointError, match=r"missing keys \(base_model\.layer3\.1\.conv1\.net\.weight\)"):
        load_tsm(tmp_path / "broken.pth", arch="tiny")


def test_unshifted_tsn_checkpoint_is_named(tmp_path):
    sd = {k.replace(".conv1.net.", ".conv1."): v for k, v in tsm_state().items()}
    save_tsm_checkpoint(tmp_path / "TSM_kinetics_RGB_resnet50_avg_segment5_e50.pth", sd)
    with pytest.raises(CheckpointError, match="unexpected keys.*without temporal shift"):
        load_tsm(tmp_path / "TSM_kinetics_RGB_resnet50_avg_segment5_e50.pth", arch="tiny")


def test_base_checkpoint_given_to_tiny_names_the_shape(tmp_path):
    save_tsm_checkpoint(tmp_path / NAME, tsm_state(width=8, layers=(2, 2, 2, 2)))
    with pytest.raises(CheckpointError,
                       match=r"shape mismatch.*conv1\.weight: checkpoint \(8, 3, 7, 7\) vs model \(16"):
        load_tsm(tmp_path / NAME, arch="tiny")


def test_timesformer_or_ast_file_given_as_tsm(tmp_path):
    save_pyth(tmp_path / "TimeSformer_divST_8x32_224_K400.pyth", timesformer_state(dim=64, depth=2, img_size=64))
    with pytest.raises(CheckpointError, match=r"TimeSformer_divST_8x32_224_K400\.pyth does not fit TSM.*"
                                              r"missing keys.*unexpected keys.*transformer checkpoint"):
        load_tsm(tmp_path / "TimeSformer_divST_8x32_224_K400.pyth", arch="tiny")
    torch.save(ast_state(), tmp_path / "audioset_10_10_0.4593.pth")
    with pytest.raises(CheckpointError, match="does not fit TSM.*transformer checkpoint"):
        load_tsm(tmp_path / "audioset_10_10_0.4593.pth", arch="tiny")


def test_bad_options_and_inputs_are_named(tiny_ckpt):
    with pytest.raises(ValueError, match="num_segments must be an integer >= 1, got 0"):
        load_tsm(num_segments=0, arch="tiny")
    with pytest.raises(ValueError, match="arch must be one of base, tiny, got 'huge'"):
        load_tsm(arch="huge")
    model = load_tsm(tiny_ckpt[0], num_segments=4, arch="tiny")
    with pytest.raises(ValueError, match=r"TSM expects frames of shape \(B, 3, 4, H, W\), got \(1, 3, 8, 64, 64\)"):
        model.embed(_frames(1, 8, 64))


def test_filename_options_and_registry(tiny_ckpt):
    assert tsm_options_from_filename(NAME) == {"num_segments": 8, "shift_div": 8}
    with pytest.raises(ValueError, match="not an RGB ResNet-50 blockres TSM checkpoint name"):
        tsm_options_from_filename("TSM_kinetics_Flow_resnet50_shift8_blockres_avg_segment8_e50.pth")
    model = create_backbone("tsm", tiny_ckpt[0], num_segments=4, arch="tiny")
    # A checkpoint's own classifier is cached beside the embedding, in its label space.
    assert model.embedding_shapes("video") == {"video": (512,),
                                               "logits": {"shape": [400], "label_space": "backbone"}}
    assert model.embed(_frames(1, 4, 64))["video"].shape == (1, 512)
    with pytest.raises(ValueError, match="TSM encodes video only"):
        model.embedding_shapes("audio")
    assert PREPROCESSING["frames"]["mean"] == (0.485, 0.456, 0.406)


@pytest.mark.slow
def test_base_resnet50_kinetics_layout_at_224(tmp_path):
    sd = tsm_state(width=64, layers=(3, 4, 6, 3), seed=7)
    save_tsm_checkpoint(tmp_path / NAME, sd)
    model = load_tsm(tmp_path / NAME, num_segments=8)
    frames = _frames(1, 8, 224, seed=8)
    ref_embed, ref_logits = tsm_reference(sd, frames)
    emb = model.embed(frames)["video"]
    assert emb.shape == (1, 2048)
    _close(emb, ref_embed, 1e-4)
    _close(model.classify(frames), ref_logits, 1e-4)
