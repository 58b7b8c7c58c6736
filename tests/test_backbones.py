"""The frozen backbones: official checkpoint layouts load exactly and give the reference embeddings."""
import hashlib

import pytest
import torch

from alphafuse.extract import CheckpointError, load_ast, load_timesformer
from tests.checkpoints import ast_reference, ast_state, save_pyth, timesformer_reference, timesformer_state

TOL = 1e-5


def _video(b, t, size, seed=0):
    return torch.randn(b, 3, t, size, size, generator=torch.Generator().manual_seed(seed))


def _fbank(b, tdim, seed=0):
    return torch.randn(b, tdim, 128, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- TimeSformer

@pytest.mark.parametrize("attention_type", ["divided_space_time", "space_only", "joint_space_time"])
def test_timesformer_pyth_matches_reference_forward(tmp_path, attention_type):
    sd = timesformer_state(dim=64, depth=2, num_frames=4, img_size=64, attention_type=attention_type)
    save_pyth(tmp_path / "tsf.pyth", sd)
    model = load_timesformer(tmp_path / "tsf.pyth", num_frames=4, img_size=64,
                             attention_type=attention_type, arch="tiny")
    video = _video(2, 4, 64)
    ours = model(video)
    ref = torch.stack([timesformer_reference(sd, v, heads=2, attention_type=attention_type) for v in video])
    assert ours.shape == (2, 64)
    assert (ours - ref).abs().max() < TOL


def test_timesformer_resizes_time_and_space_embeddings_like_the_reference(tmp_path):
    # Trained on 16 frames at 64 px, run on 8 frames at 96 px: nearest resizing of both embeddings.
    sd = timesformer_state(dim=64, depth=2, num_frames=16, img_size=64)
    save_pyth(tmp_path / "tsf.pyth", sd)
    model = load_timesformer(tmp_path / "tsf.pyth", num_frames=8, img_size=96, arch="tiny")
    video = _video(1, 8, 96)
    ref = timesformer_reference(sd, video[0], heads=2, attention_type="divided_space_time")
    assert (model(video)[0] - ref).abs().max() < TOL


@pytest.mark.slow
def test_base_howto100m_64_frame_checkpoint_on_8_frames(tmp_path):
    sd = timesformer_state(dim=768, depth=12, num_frames=64, img_size=224, seed=3)
    save_pyth(tmp_path / "TimeSformer_divST_64x32_224_HowTo100M.pyth", sd)
    model = load_timesformer(tmp_path / "TimeSformer_divST_64x32_224_HowTo100M.pyth", num_frames=8)
    video = _video(1, 8, 224, seed=1)
    ours = model(video)
    ref = timesformer_reference(sd, video[0], heads=12, attention_type="divided_space_time")
    assert ours.shape == (1, 768)
    assert (ours[0] - ref).abs().max() < 1e-4


def test_timesformer_plain_state_dict_loads(tmp_path):
    source = load_timesformer(arch="tiny", num_frames=2, img_size=32, seed=5)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    loaded = load_timesformer(tmp_path / "plain.pt", arch="tiny", num_frames=2, img_size=32)
    video = _video(2, 2, 32)
    assert torch.equal(loaded(video), source(video))


def test_missing_key_is_named(tmp_path):
    sd = timesformer_state(dim=64, depth=2, num_frames=4, img_size=64)
    del sd["blocks.1.temporal_fc.bias"]
    save_pyth(tmp_path / "broken.pyth", sd)
    with pytest.raises(CheckpointError, match=r"missing keys \(blocks\.1\.temporal_fc\.bias\)"):
        load_timesformer(tmp_path / "broken.pyth", num_frames=4, img_size=64, arch="tiny")


def test_unexpected_key_is_named(tmp_path):
    sd = timesformer_state(dim=64, depth=2, num_frames=4, img_size=64)
    sd["blocks.0.extra_gate.weight"] = torch.zeros(3)
    save_pyth(tmp_path / "extra.pyth", sd)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(blocks\.0\.extra_gate\.weight\)"):
        load_timesformer(tmp_path / "extra.pyth", num_frames=4, img_size=64, arch="tiny")


def test_wrong_size_checkpoint_names_shape_mismatch(tmp_path):
    save_pyth(tmp_path / "base.pyth", timesformer_state(dim=96, depth=2, num_frames=4, img_size=64))
    with pytest.raises(CheckpointError, match=r"shape mismatch.*cls_token: checkpoint \(1, 1, 96\) vs model \(1, 1, 64\)"):
        load_timesformer(tmp_path / "base.pyth", num_frames=4, img_size=64, arch="tiny")


def test_wrong_attention_type_gets_a_hint(tmp_path):
    save_pyth(tmp_path / "so.pyth", timesformer_state(dim=64, depth=2, img_size=64, attention_type="space_only"))
    with pytest.raises(CheckpointError, match="attention_type='space_only'"):
        load_timesformer(tmp_path / "so.pyth", img_size=64, arch="tiny")


def test_ast_file_given_as_timesformer_fails_clearly(tmp_path):
    torch.save(ast_state(), tmp_path / "audioset_10_10_0.4593.pth")
    with pytest.raises(CheckpointError, match="does not fit TimeSformer.*missing keys.*unexpected keys"):
        load_timesformer(tmp_path / "audioset_10_10_0.4593.pth", arch="tiny")


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"not a checkpoint at all", "not a readable")])
def test_unreadable_checkpoint_files(tmp_path, content, message):
    (tmp_path / "bad.pyth").write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_timesformer(tmp_path / "bad.pyth", arch="tiny")
    with pytest.raises(CheckpointError, match="not found"):
        load_ast(tmp_path / "absent.pth", arch="tiny")


# ----------------------------------------------------------------------------- AST

@pytest.mark.parametrize("input_tdim", [1024, 400, 1200])  # as trained, centre cut, bilinear interpolation
def test_ast_dataparallel_checkpoint_matches_reference_forward(tmp_path, input_tdim):
    sd = ast_state(dim=64, depth=2)
    torch.save(sd, tmp_path / "audioset_10_10_0.4593.pth")
    model = load_ast(tmp_path / "audioset_10_10_0.4593.pth", input_tdim=input_tdim, arch="tiny")
    fbank = _fbank(2, input_tdim)
    ours = model(fbank)
    ref = torch.stack([ast_reference(sd, f, heads=2) for f in fbank])
    assert ours.shape == (2, 64)
    assert (ours - ref).abs().max() < TOL


@pytest.mark.slow
def test_base_ast_checkpoint_matches_reference_forward(tmp_path):
    sd = ast_state(dim=768, depth=12, seed=4)
    torch.save(sd, tmp_path / "audioset_10_10_0.4593.pth")
    model = load_ast(tmp_path / "audioset_10_10_0.4593.pth")
    fbank = _fbank(1, 1024, seed=2)
    assert (model(fbank)[0] - ast_reference(sd, fbank[0], heads=12)).abs().max() < 1e-4


def test_ast_missing_distillation_token_is_named(tmp_path):
    sd = ast_state()
    del sd["module.v.dist_token"]
    torch.save(sd, tmp_path / "ast.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(dist_token\)"):
        load_ast(tmp_path / "ast.pth", arch="tiny")


# ----------------------------------------------------------------------------- common behaviour

@pytest.mark.parametrize("make, example", [
    (lambda: load_timesformer(arch="tiny", num_frames=4, img_size=48), lambda b: _video(b, 4, 48)),
    (lambda: load_ast(arch="tiny", input_tdim=256), lambda b: _fbank(b, 256)),
])
def test_frozen_deterministic_and_batch_size_invariant(make, example):
    a, b = make(), make()
    assert not a.training
    assert all(not p.requires_grad for p in a.parameters())
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith("random:")
    x = example(5)
    batch = a(x)
    assert torch.equal(batch, b(x))
    singles = torch.cat([a(x[i:i + 1]) for i in range(5)])
    assert (batch - singles).abs().max() < TOL
    assert torch.isfinite(batch).all()


def test_seed_changes_random_weights_and_fingerprint():
    a = load_ast(arch="tiny", input_tdim=128, seed=0)
    b = load_ast(arch="tiny", input_tdim=128, seed=1)
    assert a.fingerprint != b.fingerprint
    assert not torch.equal(a.pos_embed, b.pos_embed)


def test_random_weights_warn(caplog):
    with caplog.at_level("WARNING"):
        load_ast(arch="tiny", input_tdim=128)
    assert "NOT pretrained" in caplog.text


def test_checkpoint_fingerprint_is_the_file_sha256(tmp_path):
    path = tmp_path / "ast.pth"
    torch.save(ast_state(), path)
    model = load_ast(path, arch="tiny")
    assert model.fingerprint == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.pretrained and model.checkpoint == str(path.resolve())


def test_wrong_input_shape_is_a_clear_error():
    model = load_timesformer(arch="tiny", num_frames=4, img_size=32)
    with pytest.raises(ValueError, match=r"expects video of shape \(B, 3, 4, 32, 32\)"):
        model(_video(1, 8, 32))
    with pytest.raises(ValueError, match="arch must be one of"):
        load_ast(arch="huge")
