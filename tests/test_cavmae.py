"""CAV-MAE: both published layouts load exactly and give the reference embeddings and logits."""
import logging

import pytest
import torch

from alphafuse.extract import CheckpointError, create_backbone, get_backbone, load_cavmae
from alphafuse.extract.cavmae import PREPROCESSING
from tests.cavmae_reference import cavmae_reference, cavmae_state, sincos_reference
from tests.checkpoints import save_pyth, timesformer_state

TOL = 1e-5
MODES = ("multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly")


def _fbank(b, length=1024, seed=0):
    return torch.randn(b, length, 128, generator=torch.Generator().manual_seed(seed))


def _frames(*shape, seed=1):
    return torch.randn(*shape, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _save(tmp_path, name, sd):
    torch.save(sd, tmp_path / name)
    return tmp_path / name


def _max_diff(ours, ref):
    return (ours.double() - ref).abs().max().item()


# ----------------------------------------------------------------------------- exact loading

def test_finetuned_file_matches_reference_embeddings_and_logits(tmp_path):
    sd = cavmae_state("finetuned", num_classes=309)
    model = load_cavmae(_save(tmp_path, "vgg_65.5.pth", sd), arch="tiny")
    fbank, frame = _fbank(2), _frames(2)
    out, logits = model.embed(fbank, frame), model.classify(fbank, frame)
    refs = [cavmae_reference(sd, fbank[i], frame[i], heads=2) for i in range(2)]
    for name in ("audio", "video", "joint"):
        assert out[name].shape == (2, 64) and out[name].dtype == torch.float32
        assert _max_diff(out[name], torch.stack([r[name] for r in refs])) < TOL, name
    assert logits.shape == (2, 309) and model.config["num_classes"] == 309
    assert _max_diff(logits, torch.stack([r["logits"]["multimodal"] for r in refs])) < TOL
    # the three embeddings are different functions of the input, not one computed thrice
    assert (out["audio"] - out["joint"]).abs().max() > 1e-2 and (out["video"] - out["joint"]).abs().max() > 1e-2


@pytest.mark.parametrize("mode", MODES[1:])
def test_single_modality_classify_modes_match_reference(tmp_path, mode):
    sd = cavmae_state("finetuned", num_classes=7, audio_length=256, seed=2)
    model = load_cavmae(_save(tmp_path, "as_46.6.pth", sd), audio_length=256, arch="tiny")
    fbank, frame = _fbank(1, 256), _frames(1)
    ref = cavmae_reference(sd, fbank[0], frame[0], heads=2)["logits"]
    only_audio = mode.endswith("audioonly")
    ours = model.classify(fbank if only_audio else None, None if only_audio else frame, mode=mode)
    assert _max_diff(ours[0], ref[mode]) < TOL
    assert _max_diff(ours[0], ref["multimodal"]) > 1e-3  # each mode is its own function


def test_pretrained_file_drops_decoder_and_matches_reference(tmp_path, caplog):
    sd = cavmae_state("pretrained", audio_length=256, seed=1)
    with caplog.at_level(logging.INFO, logger="alphafuse.extract"):
        model = load_cavmae(_save(tmp_path, "cav-mae-base.pth", sd), audio_length=256, arch="tiny")
    assert "dropping 33 decoder keys (decoder_blocks, decoder_embed, decoder_modality_a" in caplog.text
    assert "decoder_pred_v, mask_token)" in caplog.text
    assert model.num_classes == 0 and model.config["num_classes"] == 0
    fbank, frame = _fbank(2, 256), _frames(2)
    out = model.embed(fbank, frame)
    for name in ("audio", "video", "joint"):
        ref = torch.stack([cavmae_reference(sd, fbank[i], frame[i], heads=2)[name] for i in range(2)])
        assert _max_diff(out[name], ref) < TOL, name
    # loaded, not regenerated: the file's (random) positional table is the model's
    assert torch.equal(model.pos_embed_a, sd["module.pos_embed_a"])


def test_pretrained_file_cannot_classify(tmp_path):
    model = load_cavmae(_save(tmp_path, "audio_model.21.pth", cavmae_state("pretrained", audio_length=256)),
                        audio_length=256, arch="tiny")
    with pytest.raises(CheckpointError, match=r"audio_model\.21\.pth has no mlp_head \(mlp_head\.0\.weight"):
        model.classify(_fbank(1, 256), _frames(1))
    assert model.embed(_fbank(1, 256), _frames(1))["joint"].shape == (1, 64)  # embedding still works


def test_ten_frames_run_the_audio_tower_once(tmp_path):
    sd = cavmae_state("finetuned", num_classes=5, audio_length=256, seed=3)
    model = load_cavmae(_save(tmp_path, "ft.pth", sd), audio_length=256, arch="tiny")
    fbank, frames = _fbank(2, 256), _frames(2, 3)
    calls = []
    hook = model.patch_embed_a.register_forward_hook(lambda *_: calls.append(1))
    out = model.embed(fbank, frames)
    hook.remove()
    assert len(calls) == 1
    assert out["audio"].shape == (2, 64) and out["video"].shape == out["joint"].shape == (2, 3, 64)
    for f in range(3):
        single = model.embed(fbank, frames[:, f])
        for name in ("audio", "video", "joint"):
            got = out[name] if name == "audio" else out[name][:, f]
            assert (got - single[name]).abs().max() < TOL
    ref = cavmae_reference(sd, fbank[1], frames[1, 2], heads=2)
    assert _max_diff(out["joint"][1, 2], ref["joint"]) < TOL
    assert _max_diff(model.classify(fbank, frames)[1, 2], ref["logits"]["multimodal"]) < TOL
    assert torch.equal(model.embed_audio(fbank), out["audio"])
    assert (model.embed_video(frames) - out["video"]).abs().max() < TOL


def test_forward_features_token_sequences_in_reference_order(tmp_path):
    sd = cavmae_state("pretrained", audio_length=256, seed=8)
    model = load_cavmae(_save(tmp_path, "pt.pth", sd), audio_length=256, arch="tiny")
    tokens = model.forward_features(_fbank(2, 256), _frames(2))
    assert tokens["audio"].shape == (2, 128, 64) and tokens["video"].shape == (2, 196, 64)
    assert tokens["joint"].shape == (2, 128 + 196, 64)
    ref = cavmae_reference(sd, _fbank(2, 256)[1], _frames(2)[1], heads=2)["tokens"]
    for name in ("audio", "video", "joint"):  # token by token: frequency-major audio, audio before video
        assert _max_diff(tokens[name][1], ref[name]) < TOL, name
    assert torch.equal(tokens["joint"].mean(1), model.embed(_fbank(2, 256), _frames(2))["joint"])
    assert set(model.forward_features(frame=_frames(2))) == {"video"}


# ----------------------------------------------------------------------------- audio length

def test_other_audio_length_file_matches_reference(tmp_path):
    sd = cavmae_state("finetuned", num_classes=3, audio_length=512, seed=4)
    model = load_cavmae(_save(tmp_path, "ft512.pth", sd), audio_length=512, arch="tiny")
    fbank, frame = _fbank(1, 512), _frames(1)
    assert _max_diff(model.classify(fbank, frame)[0], cavmae_reference(sd, fbank[0], frame[0], 2)["logits"]["multimodal"]) < TOL


def test_file_trained_at_1024_at_another_length_is_a_named_mismatch(tmp_path):
    path = _save(tmp_path, "vgg_65.5.pth", cavmae_state("finetuned"))
    with pytest.raises(CheckpointError, match=r"pos_embed_a: checkpoint \(1, 512, 64\) vs model \(1, 256, 64\)"
                                              r".*made for audio_length=1024"):
        load_cavmae(path, audio_length=512, arch="tiny")


@pytest.mark.parametrize("bad", [1000, 0, 8, "1024", True])
def test_audio_length_must_be_a_multiple_of_16(bad):
    with pytest.raises(ValueError, match=rf"audio_length must be a positive multiple of 16.*got {bad!r}"):
        load_cavmae(audio_length=bad, arch="tiny")


def test_random_pos_embeds_are_the_reference_sincos_tables():
    model = load_cavmae(arch="tiny", audio_length=256)
    assert (model.pos_embed_a[0].double() - sincos_reference(64, 8, 16)).abs().max() < 1e-6
    assert (model.pos_embed_v[0].double() - sincos_reference(64, 14, 14)).abs().max() < 1e-6


# ----------------------------------------------------------------------------- bad files

def test_timesformer_file_given_as_cavmae_fails_naming_keys(tmp_path):
    save_pyth(tmp_path / "TimeSformer_divST_8x32_224_K400.pyth", timesformer_state(dim=64, depth=2, img_size=64))
    with pytest.raises(CheckpointError, match=r"does not fit CAVMAE.*missing keys \(.*blocks_a\.0\..*unexpected keys "
                                              r"\(.*blocks\.0\..*not a CAV-MAE file"):
        load_cavmae(tmp_path / "TimeSformer_divST_8x32_224_K400.pyth", arch="tiny")


@pytest.mark.parametrize("layout", ["pretrained", "finetuned"])
def test_missing_key_is_named(tmp_path, layout):
    sd = cavmae_state(layout, audio_length=256)
    del sd["module.blocks_u.0.norm1_a.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing keys \(blocks_u\.0\.norm1_a\.weight\)"):
        load_cavmae(_save(tmp_path, "broken.pth", sd), audio_length=256, arch="tiny")


def test_unexpected_key_is_named(tmp_path):
    sd = cavmae_state("finetuned", audio_length=256)
    sd["module.blocks_v.1.gate.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(blocks_v\.1\.gate\.weight\)"):
        load_cavmae(_save(tmp_path, "extra.pth", sd), audio_length=256, arch="tiny")


def test_base_file_into_tiny_names_shape_mismatch(tmp_path):
    sd = cavmae_state("finetuned", dim=96, audio_length=256)  # another width, the same key set
    with pytest.raises(CheckpointError, match=r"shape mismatch.*modality_a: checkpoint \(1, 1, 96\) vs model \(1, 1, 64\)"):
        load_cavmae(_save(tmp_path, "wide.pth", sd), audio_length=256, arch="tiny")


# ----------------------------------------------------------------------------- API and behaviour

def test_registered_audiovisual_backbone_with_its_options():
    entry = get_backbone("cavmae")
    assert entry.modality == "audiovisual" and entry.can_encode("audio") and entry.can_encode("video")
    assert entry.options == {"audio_length": 1024, "arch": "base", "seed": 0}
    model = create_backbone("cavmae", arch="tiny", audio_length=128, seed=1)
    assert model.audio_length == 128 and model.config["arch"] == "tiny"


def test_embedding_shapes_and_input_specs():
    model = load_cavmae(arch="tiny", audio_length=256)
    assert model.embedding_shapes("audio") == {"audio": (64,)}
    assert model.embedding_shapes("video") == {"video": {"shape": [10, 64], "views": 10}}
    assert set(model.embedding_shapes("audiovisual")) == {"audio", "video", "joint"}   # no head: no logits
    specs = model.input_specs("audiovisual")
    audio, video = specs["audio"], specs["video"]
    assert (audio.target_length, audio.norm_mean, audio.norm_std, audio.norm_std_scale, audio.downmix) == \
        (256, -5.081, 4.4849, 1.0, "first")
    assert (video.num_frames, video.img_size, video.sampling, video.resize_backend, video.jpeg_quality) == \
        (10, 224, "cavmae", "pil", 75)
    assert video.mean == (0.485, 0.456, 0.406) and video.std == (0.229, 0.224, 0.225)
    assert video.yuv_matrix == "bt601"      # OpenCV 4.6's matrix whatever the tag (data/colour.py)
    assert set(model.input_specs("video")) == {"video"} and set(model.input_specs("audio")) == {"audio"}
    with pytest.raises(ValueError, match="modality must be"):
        model.embedding_shapes("text")
    from alphafuse.extract.registry import Extras
    with pytest.raises(ValueError, match="caches no tokens or layers"):
        model.embedding_shapes("audiovisual", Extras(tokens=True))


def test_preprocessing_declares_the_reference_pipeline():
    audio, video = PREPROCESSING["audio"], PREPROCESSING["video"]
    assert (audio["norm_mean"], audio["norm_std"], audio["sample_rate"]) == (-5.081, 4.4849, 16000)
    assert audio["fbank"]["num_mel_bins"] == 128 and audio["fbank"]["dither"] == 0.0
    assert video["mean"] == (0.485, 0.456, 0.406) and video["std"] == (0.229, 0.224, 0.225)
    assert video["frames_per_clip"] == 10 and video["eval_frame"] == 5 and video["yuv_matrix"] == "bt601"


def test_frozen_deterministic_and_batch_size_invariant():
    a, b = load_cavmae(arch="tiny", audio_length=128), load_cavmae(arch="tiny", audio_length=128)
    assert not a.training and all(not p.requires_grad for p in a.parameters())
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith("random:")
    fbank, frame = _fbank(3, 128), _frames(3)
    batch = a.embed(fbank, frame)
    assert all(torch.equal(batch[k], b.embed(fbank, frame)[k]) for k in batch)
    for i in range(3):
        one = a.embed(fbank[i:i + 1], frame[i:i + 1])
        assert all((one[k][0] - batch[k][i]).abs().max() < TOL for k in batch)
    assert load_cavmae(arch="tiny", audio_length=128, seed=1).fingerprint != a.fingerprint


def test_bad_inputs_are_clear_errors(tmp_path):
    model = load_cavmae(arch="tiny", audio_length=128)
    with pytest.raises(ValueError, match=r"expects fbank of shape \(B, 128, 128\), got \(1, 1024, 128\)"):
        model.embed(_fbank(1), _frames(1))
    with pytest.raises(ValueError, match=r"expects frame of shape .*got \(1, 3, 112, 112\)"):
        model.embed(frame=torch.zeros(1, 3, 112, 112))
    with pytest.raises(ValueError, match="same batch size, got 2 and 1"):
        model.embed(_fbank(2, 128), _frames(1))
    with pytest.raises(ValueError, match="arch must be one of"):
        load_cavmae(arch="large")
    ft = load_cavmae(_save(tmp_path, "ft.pth", cavmae_state("finetuned", audio_length=128, num_classes=4)),
                     audio_length=128, arch="tiny")
    with pytest.raises(ValueError, match="mode must be one of .*got 'fusion'"):
        ft.classify(_fbank(1, 128), _frames(1), mode="fusion")
    with pytest.raises(ValueError, match="'multimodal' needs fbank and frame"):
        ft.classify(_fbank(1, 128))


# ----------------------------------------------------------------------------- base size

@pytest.mark.slow
def test_base_finetuned_file_matches_reference(tmp_path):
    sd = cavmae_state("finetuned", dim=768, specific_depth=11, unified_depth=1, num_classes=309, seed=5)
    model = load_cavmae(_save(tmp_path, "vgg_65.5.pth", sd))
    fbank, frame = _fbank(1, seed=6), _frames(1, seed=7)
    with torch.inference_mode():
        out, logits = model.embed(fbank, frame), model.classify(fbank, frame)
    ref = cavmae_reference(sd, fbank[0], frame[0], heads=12, dtype=torch.float32)
    for name in ("audio", "video", "joint"):
        assert out[name].shape == (1, 768) and _max_diff(out[name][0], ref[name]) < 1e-4, name
    assert logits.shape == (1, 309) and _max_diff(logits[0], ref["logits"]["multimodal"]) < 1e-4
