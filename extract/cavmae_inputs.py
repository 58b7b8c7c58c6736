"""CAV-MAE's inputs, the preprocessing half of the cavmae family (extract/cavmae.py, the model,
would pass ~400 lines with it): :data:`PREPROCESSING` as the reference does it, its frame rule
"cavmae" (a data/sampling.py rule) and :func:`cavmae_input_specs`, data/'s generic VideoConfig and
AudioConfig set to that pipeline (so one demux pass serves both, as for TimeSformer and AST).
"""
from __future__ import annotations

from alphafuse.data import AudioConfig, VideoConfig
from alphafuse.data.sampling import check_single_view, register_sampling

IMG_SIZE = 224

PREPROCESSING = {
    "audio": {
        # src/preprocess/extract_audio.py: ffmpeg resamples (keeping every channel, 16-bit PCM wav,
        # ffmpeg's default resampler), then sox keeps the FIRST channel: not a down-mix.
        "extract": "ffmpeg -i {video} -vn -ar 16000 {id}_intermediate.wav && sox {id}_intermediate.wav {id}.wav remix 1",
        "sample_rate": 16000,
        "channel": "first (sox remix 1)",
        "sample_format": "pcm_s16le, read by torchaudio.load as float in [-1, 1)",
        # src/dataloader.py AudiosetDataset._wav2fbank
        "subtract_mean": True,
        "fbank": {"htk_compat": True, "use_energy": False, "window_type": "hanning", "num_mel_bins": 128,
                  "dither": 0.0, "frame_shift": 10.0, "frame_length": 25.0, "other_arguments": "kaldi.fbank defaults"},
        "target_length": 1024,          # zero rows appended at the end, or the first 1024 rows kept
        # AudiosetDataset.__getitem__: (fbank - mean) / std, NOT AST's / (2 * std); the values are
        # --dataset_mean/--dataset_std of egs/{audioset,vggsound}/run_cavmae_*.sh (both datasets).
        "norm_mean": -5.081,
        "norm_std": 4.4849,
        "normalise": "(fbank - norm_mean) / norm_std, after padding",
    },
    "video": {
        # src/preprocess/extract_video_frame.py extract_frame: OpenCV, N = min(CAP_PROP_FRAME_COUNT,
        # int(fps * 10)) (the clip's first 10 s); frame i of 10 is the one read after
        # set(CAP_PROP_POS_FRAMES, int(i * (N / 10)) - 1), i.e. 0-based index max(int(i * N / 10) - 1, 0).
        "frames_per_clip": 10,
        "frame_index": "max(int(i * (N / 10)) - 1, 0), i = 0..9, N = min(frame_count, int(fps * 10))",
        # OpenCV 4.6 (requirements_a5.txt) converts YUV with swscale's default matrix, BT.601,
        # whatever the stream is tagged with (data/colour.py).
        "yuv_matrix": "bt601",
        # Then BGR->RGB, torchvision Resize(224) (shorter side, PIL bilinear), CenterCrop(224),
        # ToTensor, save_image: uint8 via x * 255 + 0.5, JPEG by PIL at its default quality 75.
        "extract_resize": {"size": 224, "interpolation": "bilinear", "center_crop": 224},
        "stored_as": "JPEG, PIL quality 75",
        # src/dataloader.py AudiosetDataset.preprocess: Resize(224, BICUBIC) + CenterCrop(224) on the
        # stored 224x224 JPEG (both identity at that size), ToTensor, ImageNet normalisation.
        "load_resize": {"size": 224, "interpolation": "bicubic", "center_crop": 224},
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        # AudiosetDataset.randselect_img: eval mode uses frame_use, default -1 -> frame 5 = int(10 / 2);
        # src/run_cavmae_ft.py evaluates frames 0..9 one by one and averages softmax (accuracy) or
        # sigmoid (mAP) outputs over them. Training draws a random frame in 0..9.
        "eval_frame": 5,
        "eval_multi_frame": "mean over frames 0..9 of softmax (acc) / sigmoid (mAP) of the logits",
    },
}


@register_sampling("cavmae")
def cavmae(num_available, num_frames, *, fps, view=0, num_views=1, seconds=10.0, extracted=10,
           frame_use=-1):
    """CAV-MAE's frames. Extraction (src/preprocess/extract_video_frame.py, ``extract_frame``):
    of ``total = min(frame count, int(fps * seconds))`` frames, extracted frame ``i`` of
    ``extracted`` is read after ``CAP_PROP_POS_FRAMES = int(i * (total / extracted)) - 1``, so
    OpenCV returns frame ``max(int(i * (total / extracted)) - 1, 0)`` (a negative position
    seeks to the start). With ``num_frames == extracted`` all of them; with ``num_frames == 1``
    the one its eval dataloader reads (src/dataloader.py, ``randselect_img``): ``frame_use``,
    where -1 means the middle one, ``int(extracted / 2)``."""
    check_single_view("cavmae", num_views)
    total = min(num_available, int(fps * seconds))
    frames = [max(int(i * (total / extracted)) - 1, 0) for i in range(extracted)]
    if num_frames == extracted:
        return frames
    if num_frames == 1 and -1 <= frame_use < extracted:
        return [frames[int(extracted / 2) if frame_use == -1 else frame_use]]
    raise ValueError(f"sampling rule 'cavmae' gives all {extracted} extracted frames or one of them "
                     f"(frame_use -1..{extracted - 1}): got num_frames={num_frames}, "
                     f"frame_use={frame_use}")


def cavmae_input_specs(modality: str, audio_length: int) -> dict:
    """The data/ specs of :data:`PREPROCESSING`: 16 kHz first channel, fbank / std; the ten
    frames of the first 10 s converted to RGB with BT.601 (OpenCV 4.6), torchvision's PIL
    Resize(224) + CenterCrop(224), a JPEG round
    trip at quality 75, ImageNet normalisation. ``modality``: audio, video or audiovisual (both)."""
    audio, video = PREPROCESSING["audio"], PREPROCESSING["video"]
    specs = {}
    if modality != "video":
        specs["audio"] = AudioConfig(sample_rate=audio["sample_rate"], num_mel_bins=audio["fbank"]["num_mel_bins"],
                                     target_length=audio_length, norm_mean=audio["norm_mean"],
                                     norm_std=audio["norm_std"], norm_std_scale=1.0, downmix="first")
    if modality != "audio":
        specs["video"] = VideoConfig(num_frames=video["frames_per_clip"], img_size=IMG_SIZE,
                                     mean=video["mean"], std=video["std"], resize=IMG_SIZE,
                                     interpolation="bilinear", resize_backend="pil", jpeg_quality=75,
                                     sampling="cavmae", yuv_matrix=video["yuv_matrix"])
    return specs
