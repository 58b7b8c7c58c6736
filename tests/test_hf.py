"""The hf backbone family: tiny random snapshots saved by transformers, compared with transformers.

Each family's pooled embedding is recomputed here from the reference model's own submodules by
the rule its *ForXClassification forward follows (or pooler output / masked token mean), and its
logits compared with that forward: a wrong hook, pooling or mask would break them.
"""
import json
import logging

import numpy as np
import pytest
import torch

from tests.hf_snapshots import build

TOL = 1e-5


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """kind -> (folder, the reference model transformers saved there), built once per module."""
    root = tmp_path_factory.mktemp("hf")
    made = {}

    def get(kind):
        if kind not in made:
            made[kind] = (root / kind, build(kind, root / kind))
        return made[kind]
    return get


def _frames(n=4, seed=0, size=(40, 52)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def _video_inputs(proc, batch=2):
    videos = [_frames(seed=s) for s in range(batch)]
    return proc(videos, return_tensors="pt")


def _waves(rate=16000, lengths=(16000, 11000)):
    rng = np.random.default_rng(1)
    return [rng.standard_normal(n).astype(np.float32) * 0.1 for n in lengths]


def _close(a, b, tol=TOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=tol, rtol=0), (a - b).abs().max().item()


def _load(folder):
    from alphafuse.extract import load_hf
    return load_hf(folder)


@pytest.mark.parametrize("kind", ["videomae", "videomae_cls", "timesformer"])
def test_video_classifiers_equal_transformers(snapshots, kind):
    folder, ref = snapshots(kind)
    enc = _load(folder)
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    inputs = _video_inputs(enc.processor)
    assert inputs["pixel_values"].shape == (2, 4, 3, 32, 32)
    out = enc.embed(**inputs)
    with torch.no_grad():
        logits = ref(**inputs).logits
        if kind == "timesformer":                       # final-norm CLS
            pooled = ref.timesformer(**inputs).last_hidden_state[:, 0]
        elif kind == "videomae":                        # fc_norm of the token mean
            pooled = ref.fc_norm(ref.videomae(**inputs).last_hidden_state.mean(1))
        else:                                           # CLS, no fc_norm
            pooled = ref.videomae(**inputs).last_hidden_state[:, 0]
    assert out["pooled"].dtype == torch.float32 and out["pooled"].shape == (2, 32)
    _close(out["pooled"], pooled)
    _close(out["logits"], logits)
    # the pooled vector really is what the classifier reads
    _close(ref.classifier(out["pooled"]), logits)


def test_ast_equals_transformers(snapshots):
    folder, ref = snapshots("ast")
    enc = _load(folder)
    inputs = enc.processor(_waves(), sampling_rate=16000, return_tensors="pt")
    out = enc.embed(**inputs)
    with torch.no_grad():
        base = ref.audio_spectrogram_transformer(**inputs)
        _close(out["pooled"], base.pooler_output)
        _close(out["logits"], ref(**inputs).logits)
        _close(out["tokens"], base.last_hidden_state)


def test_wav2vec2_classifier_masked_mean(snapshots):
    """Projector then the mean over the frames the attention mask covers (two lengths: padding)."""
    folder, ref = snapshots("wav2vec2")
    enc = _load(folder)
    inputs = enc.processor(_waves(), sampling_rate=16000, return_tensors="pt", padding=True)
    assert inputs["attention_mask"].sum(1).tolist() == [16000, 11000]
    out = enc.embed(**inputs)
    with torch.no_grad():
        h = ref.projector(ref.wav2vec2(**inputs).last_hidden_state)
        mask = ref._get_feature_vector_attention_mask(h.shape[1], inputs["attention_mask"]).float()
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        _close(out["pooled"], pooled)
        _close(out["logits"], ref(**inputs).logits)
    assert not torch.allclose(pooled[1], h[1].mean(0), atol=1e-4)   # the mask matters here


def test_hubert_base_masked_token_mean(snapshots):
    folder, ref = snapshots("hubert")
    enc = _load(folder)
    assert enc.kind == "base" and enc.modality == "audio"
    inputs = enc.processor(_waves(), sampling_rate=16000, return_tensors="pt", padding=True)
    out = enc.embed(**inputs)
    assert "logits" not in out
    with torch.no_grad():
        h = ref(**inputs).last_hidden_state
    mask = ref._get_feature_vector_attention_mask(h.shape[1], inputs["attention_mask"]).float()
    _close(out["pooled"], (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))


def test_whisper_encoder(snapshots):
    folder, ref = snapshots("whisper")
    enc = _load(folder)
    assert enc.config["class"] == "WhisperEncoder"
    inputs = enc.processor(_waves(), sampling_rate=16000, return_tensors="pt")
    out = enc.embed(**inputs)
    with torch.no_grad():
        h = ref.model.encoder(inputs["input_features"]).last_hidden_state
    _close(out["pooled"], h.mean(1))
    _close(out["tokens"], h)


def test_clap_audio_tower(snapshots):
    folder, ref = snapshots("clap")
    enc = _load(folder)
    assert enc.config["class"] == "ClapAudioModel" and enc.modality == "audio"
    inputs = enc.processor(_waves(), sampling_rate=16000, return_tensors="pt")
    out = enc.embed(**inputs)
    with torch.no_grad():
        _close(out["pooled"], ref.audio_model(**inputs).pooler_output)


def test_clip_vision_tower_per_frame(snapshots):
    """Frames (B, T, 3, H, W) -> one pooler output per frame (B, T, D): the frames are views."""
    folder, ref = snapshots("clip")
    enc = _load(folder)
    assert enc.modality == "video" and enc.per_frame
    frames = _frames(3)
    pixels = enc.processor(frames, return_tensors="pt")["pixel_values"]          # (3, 3, 32, 32)
    out = enc.embed(pixel_values=pixels[None])
    with torch.no_grad():
        want = ref.vision_model(pixel_values=pixels).pooler_output
    _close(out["pooled"][0], want)
    from alphafuse.extract.registry import Extras
    shapes = enc.embedding_shapes("video", Extras())
    assert shapes["video"] == {"shape": [8, 32], "views": 8}


def test_layers_are_per_block_token_means(snapshots):
    folder, ref = snapshots("videomae_pretraining")
    enc = _load(folder)
    inputs = _video_inputs(enc.processor)
    out = enc.embed(layers=True, **inputs)
    with torch.no_grad():
        hs = ref.videomae(**inputs, output_hidden_states=True).hidden_states
    _close(out["layers"], torch.stack([h.mean(1) for h in hs[1:]], 1))
    _close(out["pooled"], hs[-1].mean(1))       # no classifier, no pooler, no final norm: token mean


# -- strict and safe loading ----------------------------------------------------------------------


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_q_bias_loads_from_the_file(snapshots):
    from safetensors.torch import load_file
    folder, _ = snapshots("videomae")
    enc = _load(folder)
    file = load_file(str(folder / "model.safetensors"))
    q = file["videomae.encoder.layer.0.attention.attention.q_bias"]
    assert q.abs().sum() > 0
    attn = enc.model.videomae.encoder.layer[0].attention.attention
    loaded = attn.query.bias if getattr(attn, "query", None) is not None and attn.query.bias is not None else attn.q_bias
    assert torch.equal(loaded, q)


def test_missing_q_bias_is_refused_naming_it(snapshots, tmp_path):
    from safetensors.torch import load_file, save_file

    from alphafuse.extract import CheckpointError
    folder = _copy(snapshots("videomae")[0], tmp_path / "snap")
    sd = load_file(str(folder / "model.safetensors"))
    del sd["videomae.encoder.layer.1.attention.attention.q_bias"]
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        _load(folder)
    msg = str(err.value)
    assert "\n" not in msg and "videomae.encoder.layer.1.attention.attention.q_bias" in msg
    assert "layer.0" not in msg


def test_unknown_key_in_the_encoder_is_refused(snapshots, tmp_path):
    from safetensors.torch import load_file, save_file

    from alphafuse.extract import CheckpointError
    folder = _copy(snapshots("ast")[0], tmp_path / "snap")
    sd = load_file(str(folder / "model.safetensors"))
    sd["audio_spectrogram_transformer.encoder.layer.0.extra.weight"] = torch.zeros(3)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="extra.weight"):
        _load(folder)


def test_wrong_shape_is_refused(snapshots, tmp_path):
    from safetensors.torch import load_file, save_file

    from alphafuse.extract import CheckpointError
    folder = _copy(snapshots("timesformer")[0], tmp_path / "snap")
    sd = load_file(str(folder / "model.safetensors"))
    key = next(k for k in sd if k.endswith("layernorm.weight"))
    sd[key] = torch.ones(31)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="shape|size"):
        _load(folder)


def test_dropped_heads_are_logged(snapshots, caplog):
    folder, _ = snapshots("videomae_pretraining")
    with caplog.at_level(logging.INFO, logger="alphafuse.extract.hf"):
        enc = _load(folder)
    assert enc.config["class"] == "VideoMAEModel"
    assert any("dropping" in r.message and "decoder." in r.message for r in caplog.records)


@pytest.mark.parametrize("remove, named", [("config.json", "config.json"),
                                           ("model.safetensors", "model.safetensors"),
                                           ("preprocessor_config.json", "preprocessor_config.json")])
def test_incomplete_folder_is_one_line_naming_folder_and_file(snapshots, tmp_path, remove, named):
    from alphafuse.extract import CheckpointError
    folder = _copy(snapshots("ast")[0], tmp_path / "snap")
    (folder / remove).unlink()
    with pytest.raises(CheckpointError) as err:
        _load(folder)
    assert "\n" not in str(err.value) and str(folder) in str(err.value) and named in str(err.value)


def test_bin_snapshot_goes_through_the_safe_reader(snapshots, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import alphafuse.extract.hf as hf
    folder = _copy(snapshots("ast")[0], tmp_path / "snap")
    sd = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")
    calls = []
    real = hf.read_checkpoint
    monkeypatch.setattr(hf, "read_checkpoint", lambda p: calls.append(p) or real(p))
    enc = _load(folder)
    assert [p.name for p in calls] == ["pytorch_model.bin"]
    ref = _load(snapshots("ast")[0])
    x = ref.processor(_waves(), sampling_rate=16000, return_tensors="pt")
    assert torch.equal(enc.embed(**x)["pooled"], ref.embed(**x)["pooled"])


def test_bin_with_code_is_refused(snapshots, tmp_path):
    from alphafuse.extract import CheckpointError
    from tests.test_checkpoint_safety import Payload
    folder = _copy(snapshots("ast")[0], tmp_path / "snap")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"w": torch.zeros(1), "evil": Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refused"):
        _load(folder)
    assert not marker.exists()


def test_fingerprint_is_over_config_and_weights(snapshots, tmp_path):
    from alphafuse.extract.checkpoint import file_sha256
    folder = _copy(snapshots("ast")[0], tmp_path / "snap")
    enc = _load(folder)
    assert enc.fingerprint == "sha256:" + file_sha256(folder)
    (folder / "README.md").write_text("notes")                      # not part of the model
    assert file_sha256(folder) == enc.fingerprint[7:]
    config = json.loads((folder / "config.json").read_text())
    config["layer_norm_eps"] = 1e-5
    (folder / "config.json").write_text(json.dumps(config))
    assert file_sha256(folder) != enc.fingerprint[7:]


def test_modality_comes_from_the_snapshot(snapshots):
    from alphafuse.extract.registry import backbone_names
    assert "hf" in backbone_names("video") and "hf" in backbone_names("audio")
    enc = _load(snapshots("ast")[0])
    with pytest.raises(ValueError, match="audio encoder: it cannot encode video"):
        enc.input_specs("video")
    with pytest.raises(ValueError, match="cannot encode audiovisual \\(give it as --audio-backbone hf"):
        enc.input_specs("audiovisual")           # --backbone hf with a one-modality snapshot
    assert enc.config["model_type"] == "audio-spectrogram-transformer" and enc.config["snapshot"] == "ast"


def test_the_snapshots_declared_statistics_are_used(snapshots):
    """TimeSformer's snapshot declares Kinetics statistics (0.45, 0.225), not ImageNet's: a grey
    frame must come out as (128 / 255 - 0.45) / 0.225 everywhere."""
    folder, _ = snapshots("timesformer")
    declared = json.loads((folder / "preprocessor_config.json").read_text())
    assert declared["image_mean"] == [0.45] * 3 and declared["image_std"] == [0.225] * 3
    enc = _load(folder)
    spec = enc.input_specs("video")["video"]
    pixels = spec.process([np.full((40, 52, 3), 128, np.uint8)] * 4)
    assert pixels.shape == (4, 3, 32, 32)
    assert torch.allclose(pixels, torch.full_like(pixels, (128 / 255 - 0.45) / 0.225), atol=1e-5)


def test_clap_random_crop_is_repeatable(snapshots):
    """CLAP's extractor crops long audio at random: the spec's input must be the same every time."""
    folder, _ = snapshots("clap")
    spec = _load(folder).input_specs("audio")["audio"]
    wave = np.random.default_rng(3).standard_normal(16000 * 3).astype(np.float32) * 0.1   # 3 s > its 1 s window
    assert torch.equal(spec.process(wave), spec.process(wave))
