"""One numeric bridge to the native families: load_ast reads a Hugging Face AST snapshot.

The networks are the same (YuanGongND/ast's ViT over the fbank, pooled as the mean of the final-
norm CLS and distillation tokens) once load_ast takes the snapshot's LayerNorm epsilon (HF: 1e-12,
the reference: 1e-6; with 1e-6 kept the tiny model below differs by 6.2e-4). What remains is
timm's fused qkv and SDPA against HF's separate projections: measured max |difference| of the
pooled embeddings 0.0 here (bit-identical on this CPU, float32), not guaranteed on
other BLAS kernels; the tolerance is 1e-5.

load_timesformer reads an HF TimeSformer snapshot the same way (transformers' TimeSformer is a
port of the same network, divided space-time attention, LayerNorm epsilon 1e-6 in both): every
final-norm token agrees to 4.8e-7 here (float32, CPU), within the same 1e-5.
"""
import json

import numpy as np
import pytest
import torch

from tests.hf_snapshots import save_snapshot

BRIDGE_TOL = 1e-5


@pytest.fixture(scope="module")
def hf_ast(tmp_path_factory):
    """A tiny HF AST of load_ast's tiny shape: 64 wide, 2 deep, 2 heads, 128 mel bins, strides 10."""
    import transformers as T
    folder = tmp_path_factory.mktemp("bridge") / "ast"
    torch.manual_seed(0)
    model = T.ASTForAudioClassification(T.ASTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, max_length=64,
        num_mel_bins=128, frequency_stride=10, time_stride=10, num_labels=3))
    return folder, save_snapshot(model, T.ASTFeatureExtractor(max_length=64, num_mel_bins=128), folder)


def test_load_ast_reads_an_hf_snapshot_and_equals_transformers(hf_ast):
    from alphafuse.extract import load_ast, load_hf
    folder, ref = hf_ast
    native = load_ast(folder, input_tdim=64, arch="tiny")
    assert native.pretrained and native.fingerprint == load_hf(folder).fingerprint
    rng = np.random.default_rng(0)
    fe = load_hf(folder).processor
    inputs = fe([rng.standard_normal(12000).astype(np.float32) * 0.1 for _ in range(2)], sampling_rate=16000,
                return_tensors="pt")
    with torch.no_grad():
        want = ref.audio_spectrogram_transformer(**inputs).pooler_output
        got = native(inputs["input_values"])
    diff = (got - want).abs().max().item()
    assert diff < BRIDGE_TOL, diff
    print(f"load_ast vs transformers AST: max |diff| {diff:.3g}")
    # the same numbers as load_hf's pooled embedding
    assert (load_hf(folder).embed(**inputs)["pooled"] - got).abs().max() < BRIDGE_TOL
    # and the classifier the native model dropped maps them to transformers' logits
    assert (ref.classifier(got) - ref(**inputs).logits).abs().max() < BRIDGE_TOL


def test_load_ast_refuses_an_hf_snapshot_of_another_shape(hf_ast, tmp_path):
    import shutil

    from alphafuse.extract import CheckpointError, load_ast
    folder = shutil.copytree(hf_ast[0], tmp_path / "ast")
    with pytest.raises(CheckpointError, match="hidden_size 64 \\(load_ast builds 768\\)"):
        load_ast(folder, input_tdim=64)                           # base arch: 768 wide
    config = json.loads((folder / "config.json").read_text())
    config["time_stride"] = 12
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="time_stride 12"):
        load_ast(folder, input_tdim=64, arch="tiny")


@pytest.fixture(scope="module")
def hf_timesformer(tmp_path_factory):
    """A tiny HF TimeSformer of load_timesformer's tiny shape: 64 wide, 2 deep, 2 heads, divided space-time."""
    import transformers as T
    folder = tmp_path_factory.mktemp("bridge") / "timesformer"
    torch.manual_seed(0)
    model = T.TimesformerForVideoClassification(T.TimesformerConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, image_size=32,
        patch_size=16, num_frames=4, num_labels=3))
    processor = T.VideoMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return folder, save_snapshot(model, processor, folder)


def test_load_timesformer_reads_an_hf_snapshot_and_equals_transformers(hf_timesformer):
    from alphafuse.extract import load_hf, load_timesformer
    folder, ref = hf_timesformer
    native = load_timesformer(folder, num_frames=4, img_size=32, arch="tiny")
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.standard_normal((2, 4, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        want = ref.timesformer(pixel_values=pixels).last_hidden_state
        got = native.forward_features(pixels.transpose(1, 2))     # native frames are (B, 3, T, H, W)
    diff = (got - want).abs().max().item()
    print(f"load_timesformer vs transformers TimeSformer: max |diff| over all tokens {diff:.3g}")
    assert diff < BRIDGE_TOL, diff
    assert (load_hf(folder).embed(pixel_values=pixels)["pooled"] - got[:, 0]).abs().max() < BRIDGE_TOL
    with pytest.raises(Exception, match="attention_type 'divided_space_time' \\(load_timesformer builds 'space_only'\\)"):
        load_timesformer(folder, num_frames=4, img_size=32, arch="tiny", attention_type="space_only")
