"""CAV-MAE (Gong et al., ICLR 2023), the frozen audio-visual backbone.

Follows YuanGongND/cav-mae ``src/models/cav_mae.py``: two modality-specific ViT streams
(``blocks_a`` over the fbank, ``blocks_v`` over ONE RGB frame: a 2-D patch embedding, no temporal
model), then shared ``blocks_u`` whose LayerNorms are chosen per call: ``norm1_a``/``norm2_a`` for
audio alone, ``norm1_v``/``norm2_v`` for video alone, ``norm1``/``norm2`` for the concatenated
audio-then-video sequence. The streams use their blocks' shared ``norm1``/``norm2``. All norms are
``nn.LayerNorm`` with its default eps 1e-5 (not the 1e-6 of timm's ViT). No CLS token; the sin-cos
positional tables are parameters and so are stored in every published file (trainable, and
trained, in the fine-tuned ``CAVMAEFT`` files), so they are loaded, never regenerated.

Embeddings (all float32, ``embed_dim`` wide, the mean over tokens of final-norm tokens):

* ``audio`` = mean(norm_a(blocks_u(blocks_a(a), 'a'))): ``CAVMAE.forward_feat`` (the audio
  half of its retrieval features; the mean is what ``CAVMAE.forward`` feeds its contrastive loss)
  and ``CAVMAEFT.forward(mode='audioonly')`` before ``mlp_head``;
* ``video`` = mean(norm_v(blocks_u(blocks_v(v), 'v'))): same functions, visual half / 'videoonly';
* ``joint`` = mean(norm(blocks_u(cat(a, v)))): ``CAVMAEFT.forward(mode='multimodal')``, the input
  of ``mlp_head`` (also ``CAVMAE.forward_encoder``'s ``x`` without masking).

A clip of F frames (``frame`` of shape (B, F, 3, 224, 224), as the reference's 10-frame
evaluation) runs the audio stream ONCE and reuses its tokens: the video stream runs per frame,
and ``joint`` is F runs of ``blocks_u`` on cat(audio stream tokens, frame f's stream tokens).

Input pipeline (:data:`PREPROCESSING`, its specs and frame rule in extract/cavmae_inputs.py; the
reference files and functions, in order):

* audio, src/preprocess/extract_audio.py: ``ffmpeg -i VIDEO -vn -ar 16000 X_intermediate.wav``
  (all channels kept, ffmpeg's default resampler, 16-bit PCM), then ``sox ... remix 1``: the
  FIRST channel, not a down-mix. src/dataloader.py ``AudiosetDataset._wav2fbank``:
  ``torchaudio.load`` (float in [-1, 1)), subtract the waveform's mean, ``kaldi.fbank``
  (htk_compat, 16 kHz, use_energy False, hanning, 128 mel bins, dither 0, 10 ms shift, default
  25 ms window), zero rows appended or the first ``target_length`` rows kept (1024); then
  ``__getitem__``: ``(fbank - (-5.081)) / 4.4849``: divided by the std, where AST divides by
  2 * std (mean and std are the egs/*/run_cavmae_*.sh values, the same for AudioSet and VGGSound).
* frames, src/preprocess/extract_video_frame.py ``extract_frame``: OpenCV; N = min(frame count,
  int(fps * 10)), the first 10 s; frame i in 0..9 is read after
  ``set(CAP_PROP_POS_FRAMES, int(i * (N / 10)) - 1)``, i.e. 0-based frame max(int(i * N / 10) - 1, 0)
  (OpenCV seeks -1 to 0); YUV to BGR with the BT.601 matrix whatever the stream's tag (OpenCV
  4.6, pinned by requirements_a5.txt; data/colour.py); BGR to RGB; torchvision ``Resize(224)`` (shorter side, PIL bilinear)
  and ``CenterCrop(224)``; ``save_image``: uint8 by x * 255 + 0.5, a JPEG at PIL's default
  quality 75. src/dataloader.py ``AudiosetDataset.preprocess``: ``Resize(224, BICUBIC)`` and
  ``CenterCrop(224)`` of the stored 224 x 224 JPEG (identities at that size), ``ToTensor``,
  ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
* which frame, ``AudiosetDataset.randselect_img``: training draws one of the 10 at random;
  evaluation uses ``frame_use``, default frame 5 (= int(10 / 2); a missing file falls back to
  the previous index); src/run_cavmae_ft.py reports the multi-frame result: frames 0..9 each
  classified, softmax (accuracy) or sigmoid (mAP) outputs averaged. The reference evaluates
  under CUDA autocast (fp16); this module computes in the dtype it is given (fp32 by default).
"""
from __future__ import annotations

import logging
import numbers

import torch
from timm.layers import Mlp, PatchEmbed
from timm.models.vision_transformer import Attention
from torch import nn

from .cavmae_inputs import IMG_SIZE, PREPROCESSING, cavmae_input_specs
from .checkpoint import CheckpointError, build_backbone, drop_keys, strip_prefixes
from .registry import Extras, register_backbone

__all__ = ["CAVMAE", "load_cavmae"]

log = logging.getLogger(__name__)

ARCHS = {
    # The published size: modality_specific_depth=11 and 12 - 11 = 1 shared block (src/models/cav_mae.py).
    "base": dict(embed_dim=768, specific_depth=11, unified_depth=1, num_heads=12),
    "tiny": dict(embed_dim=64, specific_depth=2, unified_depth=1, num_heads=2),
}
NUM_MEL_BINS = 128
PATCH = 16
CLASSIFY_MODES = ("multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly")
# Keys of the pretraining class CAVMAE that are its MAE decoder, not the encoder: decoder_embed,
# decoder_modality_{a,v}, decoder_pos_embed_{a,v}, decoder_blocks, decoder_norm, decoder_pred_{a,v}; mask_token.
DECODER_PREFIXES = ("decoder_", "mask_token")

def _norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim)  # eps 1e-5, as the reference's norm_layer=nn.LayerNorm


def sincos_pos_embed(dim: int, rows: int, cols: int) -> torch.Tensor:
    """(1, rows * cols, dim): ``get_2d_sincos_pos_embed(dim, rows, cols)`` of src/models/pos_embed.py.

    Tokens are row-major. Because the reference's meshgrid puts the width first, the first half of
    the channels encodes the COLUMN index and the second half the row index; each half is
    [sin, cos] of position * 10000 ** (-k / (dim / 4)), computed in float64 as numpy does there.
    """
    if dim % 4:
        raise ValueError(f"the sin-cos table needs embed_dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    row, col = torch.meshgrid(torch.arange(rows, dtype=torch.float64),
                              torch.arange(cols, dtype=torch.float64), indexing="ij")

    def encode(pos):
        angles = pos.reshape(-1, 1) * omega
        return torch.cat((angles.sin(), angles.cos()), dim=1)

    return torch.cat((encode(col), encode(row)), dim=1).float().unsqueeze(0)


class CAVMAEBlock(nn.Module):
    """Pre-norm ViT block with three LayerNorm pairs, chosen by ``modality``: None, 'a' or 'v'."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1, self.norm1_a, self.norm1_v = _norm(dim), _norm(dim), _norm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)  # scale head_dim ** -0.5, as qk_scale=None
        self.norm2, self.norm2_a, self.norm2_v = _norm(dim), _norm(dim), _norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))                        # exact (erf) GELU

    def forward(self, x: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        suffix = {None: "", "a": "_a", "v": "_v"}[modality]
        x = x + self.attn(getattr(self, "norm1" + suffix)(x))
        return x + self.mlp(getattr(self, "norm2" + suffix)(x))


class CAVMAE(nn.Module):
    """The CAV-MAE encoder (the part ``CAVMAE`` and ``CAVMAEFT`` share), plus ``mlp_head`` when fine-tuned."""

    def __init__(self, audio_length: int = 1024, embed_dim: int = 768, specific_depth: int = 11,
                 unified_depth: int = 1, num_heads: int = 12, mlp_ratio: float = 4.0, num_classes: int = 0):
        super().__init__()
        self.audio_length = audio_length
        self.embed_dim = self.num_features = embed_dim
        # Audio: the (T, 128) fbank transposed to (1, 128, T), frequency as height, 16x16 stride 16
        # (``a.unsqueeze(1).transpose(2, 3)``); tokens frequency-major: (f, t) is token f * T/16 + t.
        self.patch_embed_a = PatchEmbed((NUM_MEL_BINS, audio_length), PATCH, in_chans=1, embed_dim=embed_dim)
        self.patch_embed_v = PatchEmbed(IMG_SIZE, PATCH, in_chans=3, embed_dim=embed_dim)
        self.modality_a = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.modality_v = nn.Parameter(torch.zeros(1, 1, embed_dim))
        fa, ta = self.patch_embed_a.grid_size
        self.pos_embed_a = nn.Parameter(sincos_pos_embed(embed_dim, fa, ta), requires_grad=False)
        self.pos_embed_v = nn.Parameter(sincos_pos_embed(embed_dim, *self.patch_embed_v.grid_size), requires_grad=False)
        self.blocks_a = nn.ModuleList(CAVMAEBlock(embed_dim, num_heads, mlp_ratio) for _ in range(specific_depth))
        self.blocks_v = nn.ModuleList(CAVMAEBlock(embed_dim, num_heads, mlp_ratio) for _ in range(specific_depth))
        self.blocks_u = nn.ModuleList(CAVMAEBlock(embed_dim, num_heads, mlp_ratio) for _ in range(unified_depth))
        self.norm_a, self.norm_v, self.norm = _norm(embed_dim), _norm(embed_dim), _norm(embed_dim)
        self._init_weights()
        self.mlp_head = None
        if num_classes:
            self.reset_classifier(num_classes)

    def _init_weights(self):
        # As the reference's initialize_weights: patch embeddings like a Linear, normal(0.02)
        # modality tokens, xavier-uniform Linears with zero bias, unit LayerNorms.
        for pe in (self.patch_embed_a, self.patch_embed_v):
            w = pe.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.modality_a, std=0.02)
        nn.init.normal_(self.modality_v, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """``CAVMAEFT.mlp_head``: LayerNorm (eps 1e-5) then Linear, on the pooled joint embedding."""
        self.mlp_head = nn.Sequential(_norm(self.embed_dim), nn.Linear(self.embed_dim, num_classes))

    @property
    def num_classes(self) -> int:
        return 0 if self.mlp_head is None else self.mlp_head[1].out_features

    # ------------------------------------------------------------------ streams
    def _audio_stream(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, 128) -> blocks_a tokens (B, 8 * T/16, D): patch, + pos_embed_a, + modality_a, blocks_a."""
        x = self.patch_embed_a(fbank.transpose(1, 2).unsqueeze(1))
        x = x + self.pos_embed_a
        x = x + self.modality_a
        for blk in self.blocks_a:
            x = blk(x)
        return x

    def _video_stream(self, frame: torch.Tensor) -> torch.Tensor:
        """(N, 3, 224, 224) -> blocks_v tokens (N, 196, D)."""
        x = self.patch_embed_v(frame)
        x = x + self.pos_embed_v
        x = x + self.modality_v
        for blk in self.blocks_v:
            x = blk(x)
        return x

    def _unified(self, x: torch.Tensor, modality: str | None) -> torch.Tensor:
        for blk in self.blocks_u:
            x = blk(x, modality)
        return {"a": self.norm_a, "v": self.norm_v, None: self.norm}[modality](x)

    # ------------------------------------------------------------------ inputs
    def _check_fbank(self, fbank: torch.Tensor) -> torch.Tensor:
        if fbank.ndim != 3 or tuple(fbank.shape[1:]) != (self.audio_length, NUM_MEL_BINS):
            raise ValueError(f"CAV-MAE expects fbank of shape (B, {self.audio_length}, {NUM_MEL_BINS}), "
                             f"got {tuple(fbank.shape)}")
        return fbank

    @staticmethod
    def _check_frame(frame: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        """(B, 3, H, W) -> itself, None; (B, F, 3, H, W) -> (B * F, 3, H, W), F."""
        want = (3, IMG_SIZE, IMG_SIZE)
        if frame.ndim == 4 and tuple(frame.shape[1:]) == want:
            return frame, None
        if frame.ndim == 5 and tuple(frame.shape[2:]) == want and frame.shape[1] >= 1:
            return frame.flatten(0, 1), frame.shape[1]
        raise ValueError(f"CAV-MAE expects frame of shape (B, 3, {IMG_SIZE}, {IMG_SIZE}) or "
                         f"(B, F, 3, {IMG_SIZE}, {IMG_SIZE}), got {tuple(frame.shape)}")

    @staticmethod
    def _per_clip(x: torch.Tensor, frames: int | None) -> torch.Tensor:
        return x if frames is None else x.unflatten(0, (-1, frames))

    # ------------------------------------------------------------------ public
    def forward_features(self, fbank: torch.Tensor | None = None,
                         frame: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Final-norm token sequences: ``audio`` (B, Na, D), ``video`` (B, [F,] 196, D) and, given
        both inputs, ``joint`` (B, [F,] Na + 196, D), audio tokens first as the reference's torch.cat.

        With F frames per clip the audio stream runs once and its tokens join every frame's.
        """
        if fbank is None and frame is None:
            raise ValueError("CAV-MAE needs fbank, frame, or both")
        out, a, v, frames = {}, None, None, None
        if fbank is not None:
            a = self._audio_stream(self._check_fbank(fbank))
            out["audio"] = self._unified(a, "a")
        if frame is not None:
            flat, frames = self._check_frame(frame)
            if fbank is not None and frame.shape[0] != fbank.shape[0]:
                raise ValueError(f"fbank and frame need the same batch size, got {fbank.shape[0]} and {frame.shape[0]}")
            v = self._video_stream(flat)
            out["video"] = self._per_clip(self._unified(v, "v"), frames)
        if a is not None and v is not None:
            a_per_frame = a if frames is None else a.repeat_interleave(frames, dim=0)
            out["joint"] = self._per_clip(self._unified(torch.cat((a_per_frame, v), dim=1), None), frames)
        return out

    def embed(self, fbank: torch.Tensor | None = None, frame: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Token means of :meth:`forward_features`, float32: audio (B, D); video, joint (B, D) or (B, F, D)."""
        return {k: x.mean(dim=-2).float() for k, x in self.forward_features(fbank, frame).items()}

    forward = embed

    def embed_audio(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, 128) -> (B, D): the audio tower alone."""
        return self.embed(fbank=fbank)["audio"]

    def embed_video(self, frame: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> (B, D), or (B, F, 3, 224, 224) -> (B, F, D): the video tower alone."""
        return self.embed(frame=frame)["video"]

    def classify(self, fbank: torch.Tensor | None = None, frame: torch.Tensor | None = None,
                 mode: str = "multimodal") -> torch.Tensor:
        """Logits (B, [F,] classes) of ``CAVMAEFT.forward(a, v, mode)``; needs a fine-tuned file.

        'multimodal' (default, the published fine-tuning): mlp_head(joint); 'audioonly' /
        'videoonly': mlp_head(audio / video); 'missingaudioonly' / 'missingvideoonly' (a
        multimodal model given one modality): mlp_head of the mean of the shared-norm and the
        modality-norm passes of blocks_u over that modality alone.
        """
        if self.mlp_head is None:
            raise CheckpointError(f"{getattr(self, 'checkpoint', None) or 'this CAV-MAE'} has no mlp_head "
                                  f"(mlp_head.0.weight, mlp_head.1.weight): classify needs a fine-tuned "
                                  f"CAVMAEFT file such as vgg_65.5.pth, not a pretraining one")
        if mode not in CLASSIFY_MODES:
            raise ValueError(f"mode must be one of {', '.join(CLASSIFY_MODES)}, got {mode!r}")
        need = {"multimodal": (fbank, frame), "audioonly": (fbank,), "missingaudioonly": (fbank,),
                "videoonly": (frame,), "missingvideoonly": (frame,)}[mode]
        if any(x is None for x in need):
            raise ValueError(f"classify mode {mode!r} needs " + {1: "its modality's input", 2: "fbank and frame"}[len(need)])
        if mode == "multimodal":
            x = self.embed(fbank, frame)["joint"]
        elif mode in ("audioonly", "videoonly"):
            x = self.embed(fbank=fbank)["audio"] if mode == "audioonly" else self.embed(frame=frame)["video"]
        else:
            frames = None
            if mode == "missingaudioonly":
                tokens, modality = self._audio_stream(self._check_fbank(fbank)), "a"
            else:
                flat, frames = self._check_frame(frame)
                tokens, modality = self._video_stream(flat), "v"
            x = (self._unified(tokens, None).mean(dim=1) + self._unified(tokens, modality).mean(dim=1)) / 2
            x = self._per_clip(x, frames).float()
        return self.mlp_head(x)

    # -- what extraction asks of a backbone (see extract/registry.py) --------------------------

    def embedding_shapes(self, modality: str = "audiovisual", extras: Extras = Extras()) -> dict:
        """Per clip: ``audio`` (D,); per frame of the 10: ``video`` and ``joint`` (10, D) and, for a
        fine-tuned file, ``logits`` (10, classes) of its own classifier (in its label space)."""
        if modality not in ("audio", "video", "audiovisual"):
            raise ValueError(f"modality must be audio, video or audiovisual, got {modality!r}")
        if extras.tokens or extras.layers is not None:
            raise ValueError("the cavmae backbone caches no tokens or layers (its streams have no CLS token); "
                             "extract it without them")
        frames = PREPROCESSING["video"]["frames_per_clip"]
        per_frame = lambda shape: {"shape": [frames, *shape], "views": frames}
        shapes = {"audio": (self.embed_dim,)} if modality != "video" else {}
        if modality != "audio":
            shapes["video"] = per_frame([self.embed_dim])
        if modality == "audiovisual":
            shapes["joint"] = per_frame([self.embed_dim])
            if self.mlp_head is not None:
                shapes["logits"] = {**per_frame([self.num_classes]), "label_space": "backbone"}
        return shapes

    def input_specs(self, modality: str = "audiovisual") -> dict:
        """extract/cavmae_inputs.py's specs of :data:`PREPROCESSING` for this model's audio length."""
        return cavmae_input_specs(modality, self.audio_length)

    def extract(self, modality: str, inputs: dict, extras: Extras = Extras()) -> dict:
        """{"audio": fbank (B, T, 128), "video": frames (B, 3, 10, 224, 224)} -> the embeddings of
        :meth:`embedding_shapes`: the audio tower once per clip, video and joint per frame."""
        self.embedding_shapes(modality, extras)       # validates modality and extras
        fbank = inputs["audio"] if modality != "video" else None
        frames = inputs["video"].transpose(1, 2) if modality != "audio" else None   # (B, F, 3, H, W)
        out = self.embed(fbank, frames)
        if modality == "audiovisual" and self.mlp_head is not None:
            out["logits"] = self.mlp_head(out["joint"])
        return {k: v for k, v in out.items() if modality == "audiovisual" or k == modality}


def checkpoint_filter_fn(state_dict: dict, model: CAVMAE) -> dict:
    """Adapt a published CAV-MAE state dict (either class, DataParallel ``module.`` keys) to ``model``.

    Pretraining files (``CAVMAE``: audio_model.21.pth, cav-mae-base.pth, ...): the MAE decoder
    (:data:`DECODER_PREFIXES`) is dropped, logged. Fine-tuned files (``CAVMAEFT``: vgg_65.5.pth,
    as-full-51.2.pth, ...): ``model`` gets an ``mlp_head`` sized from ``mlp_head.1.weight``. The
    positional tables are not resized: the reference builds them for its ``audio_length`` and
    ``load_state_dict`` then fails on another length, so strict loading names the mismatch.
    """
    sd = strip_prefixes(state_dict, ("module.",))
    decoder = [k for k in sd if k.startswith(DECODER_PREFIXES)]
    if decoder:
        groups = sorted({k.split(".")[0] for k in decoder})
        log.info("CAV-MAE pretraining (CAVMAE) file: its MAE decoder is not part of the encoder, "
                 "dropping %d decoder keys (%s)", len(decoder), ", ".join(groups))
    sd = drop_keys(sd, DECODER_PREFIXES, "CAV-MAE pretraining decoder")
    head = sd.get("mlp_head.1.weight")
    if isinstance(head, torch.Tensor) and head.ndim == 2:
        model.reset_classifier(head.shape[0])
    return sd


def _hint(state_dict: dict, audio_length: int) -> str:
    if not any(k.startswith(("blocks_a.", "blocks_v.", "blocks_u.")) for k in state_dict):
        return " (no blocks_a/blocks_v/blocks_u keys: this is not a CAV-MAE file)"
    pos = state_dict.get("pos_embed_a")
    if isinstance(pos, torch.Tensor) and pos.ndim == 3 and pos.shape[1] * 2 != audio_length:
        return (f" (pos_embed_a has {pos.shape[1]} audio patches: the file was made for audio_length="
                f"{pos.shape[1] * 2}; the reference does not resize it, pass that audio_length)")
    return ""


@register_backbone("cavmae", modality="audiovisual",
                   help="CAV-MAE (YuanGongND/cav-mae): token means of the audio, video (one frame) "
                        "and joint streams, 768-d each")
def load_cavmae(checkpoint=None, audio_length: int = 1024, arch: str = "base", seed: int = 0) -> CAVMAE:
    """A frozen, eval-mode CAV-MAE: ``embed(fbank, frame)`` -> {"audio", "video", "joint"}.

    ``checkpoint``: a published pretraining (``CAVMAE``) or fine-tuned (``CAVMAEFT``) file, i.e. a
    DataParallel state dict, or a plain state dict; classes come from its ``mlp_head``. ``None``
    gives random weights from ``seed`` (with a warning) and no head. ``audio_length``: fbank frames,
    a multiple of 16 (1024 for every published file). ``arch="tiny"``: 64 wide, 2 + 2 stream
    blocks, 1 shared block, 2 heads, for tests and CPU demos.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if isinstance(audio_length, bool) or not isinstance(audio_length, numbers.Integral) or audio_length < PATCH \
            or audio_length % PATCH:
        raise ValueError(f"audio_length must be a positive multiple of {PATCH} (the reference's pos_embed_a "
                         f"has audio_length / 2 entries on an 8 x audio_length / 16 grid), got {audio_length!r}")
    audio_length = int(audio_length)
    config = dict(model="cavmae", arch=arch, audio_length=audio_length, img_size=IMG_SIZE, **ARCHS[arch])
    model = build_backbone(lambda: CAVMAE(audio_length=audio_length, **ARCHS[arch]), f"CAV-MAE ({arch})",
                           config, checkpoint, seed, checkpoint_filter_fn,
                           hint_fn=lambda sd: _hint(sd, audio_length))
    model.config["num_classes"] = model.num_classes
    return model
