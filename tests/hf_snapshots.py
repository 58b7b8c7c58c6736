"""Tiny random Hugging Face snapshots, saved by transformers itself (no download).

Each builder returns the model it saved (the reference) after writing ``save_pretrained`` of the
model and of its processor into ``folder``. Hidden size 32, 2 layers, seeds fixed.
"""
from __future__ import annotations

from pathlib import Path

import torch

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _video_processor(size: int = 32, mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225)):
    import transformers as T

    return T.VideoMAEImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                    image_mean=list(mean), image_std=list(std))


def fill_zero_parameters(model: torch.nn.Module) -> None:
    """Random values for the parameters transformers initialises to zero (VideoMAE's q_bias, ...):
    left at zero, a weight that silently loads as zeros would look loaded."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.02)


def build(kind: str, folder) -> torch.nn.Module:
    import transformers as T

    torch.manual_seed(0)
    folder = Path(folder)
    if kind == "videomae":
        model = T.VideoMAEForVideoClassification(T.VideoMAEConfig(
            **SMALL, image_size=32, patch_size=16, num_frames=4, tubelet_size=2, num_labels=3, use_mean_pooling=True))
        proc = _video_processor()
    elif kind == "videomae_cls":          # no fc_norm: the CLS token is the classifier's input
        model = T.VideoMAEForVideoClassification(T.VideoMAEConfig(
            **SMALL, image_size=32, patch_size=16, num_frames=4, tubelet_size=2, num_labels=3, use_mean_pooling=False))
        proc = _video_processor()
    elif kind == "videomae_pretraining":  # no classifier: the decoder is dropped, the token mean pooled
        model = T.VideoMAEForPreTraining(T.VideoMAEConfig(
            **SMALL, image_size=32, patch_size=16, num_frames=4, tubelet_size=2, decoder_hidden_size=16,
            decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32))
        proc = _video_processor()
    elif kind == "timesformer":
        model = T.TimesformerForVideoClassification(T.TimesformerConfig(
            **SMALL, image_size=32, patch_size=16, num_frames=4, num_labels=3))
        proc = _video_processor()
    elif kind == "ast":
        model = T.ASTForAudioClassification(T.ASTConfig(
            **SMALL, max_length=64, num_mel_bins=32, frequency_stride=10, time_stride=10, num_labels=3))
        proc = T.ASTFeatureExtractor(max_length=64, num_mel_bins=32)
    elif kind == "wav2vec2":
        model = T.Wav2Vec2ForSequenceClassification(T.Wav2Vec2Config(
            **SMALL, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2, classifier_proj_size=16, num_labels=3))
        proc = T.Wav2Vec2FeatureExtractor(return_attention_mask=True)
    elif kind == "hubert":                # a base model: no classifier, masked token mean
        model = T.HubertModel(T.HubertConfig(
            **SMALL, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2))
        proc = T.Wav2Vec2FeatureExtractor(return_attention_mask=True)
    elif kind == "whisper":
        model = T.WhisperForConditionalGeneration(T.WhisperConfig(
            d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=50,
            max_target_positions=16, vocab_size=64, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, suppress_tokens=[], begin_suppress_tokens=[]))
        proc = T.WhisperFeatureExtractor(feature_size=16, chunk_length=1)
    elif kind == "clap":
        audio = dict(spec_size=64, num_mel_bins=16, window_size=4, patch_size=4, patch_stride=(4, 4),
                     hidden_size=32, patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2],
                     projection_dim=16, enable_fusion=False)
        text = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, projection_dim=16, max_position_embeddings=40)
        model = T.ClapModel(T.ClapConfig(audio_config=audio, text_config=text, projection_dim=16))
        proc = T.ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1,
                                      fft_window_size=400, truncation="rand_trunc", padding="repeatpad")
    elif kind == "clip":
        vision = dict(**SMALL, image_size=32, patch_size=16, projection_dim=16)
        text = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, projection_dim=16, max_position_embeddings=16)
        model = T.CLIPModel(T.CLIPConfig(vision_config=vision, text_config=text, projection_dim=16))
        proc = T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        raise ValueError(kind)
    return save_snapshot(model, proc, folder)


def save_snapshot(model: torch.nn.Module, processor, folder) -> torch.nn.Module:
    """Write ``model`` (its zero-initialised parameters filled, in eval mode) and ``processor``
    into ``folder`` as a Hugging Face snapshot; returns the model, the reference."""
    fill_zero_parameters(model)
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return model
