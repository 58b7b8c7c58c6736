"""Test helpers for data/: a corpus of synthetic clips (awkward and broken ones included) and
independent reference implementations of decoding and preprocessing to compare against.

The references are deliberately naive and share no code with data/: decode every frame with
PyAV, pick indices as the reference projects' code does, resize the whole frame with
torch.nn.functional.interpolate (or run torchvision's transforms as CAV-MAE does), crop,
normalise; the fbank is Kaldi's, written out in numpy.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from alphafuse.data.synth import write_clip

# ---------------------------------------------------------------------------------------------
# References


def reference_indices(n: int, t: int) -> list[int]:
    """Uniform sampling written out by hand: round(i * (n - 1) / (t - 1)), half to even."""
    if t == 1:
        return [0]
    return [int(round(i * (n - 1) / (t - 1))) for i in range(t)]


def timesformer_indices(n: int, t: int, fps: float, sampling_rate=32, target_fps=30,
                        clip_idx=0, num_clips=1) -> list[int]:
    """TimeSformer's timesformer/datasets/decoder.py on n decoded frames: ``decode`` computes
    ``clip_sz``, ``get_start_end_idx`` the window, ``temporal_sampling`` the indices."""
    clip_sz = sampling_rate * t / target_fps * fps
    delta = max(n - clip_sz, 0)
    start_idx = delta * clip_idx / num_clips
    end_idx = start_idx + clip_sz - 1
    index = torch.linspace(start_idx, end_idx, t)
    return torch.clamp(index, 0, n - 1).long().tolist()


def timesformer_pyav_frames(path, t=8, sampling_rate=32, target_fps=30, clip_idx=0, num_clips=1):
    """TimeSformer's decoder.py ``decode(container, ..., backend="pyav")`` as it runs: metadata,
    ``get_start_end_idx`` on the declared frame count, pts window, seek, the
    ``pyav_decode_stream`` loop (buffer_size 0), ``temporal_sampling``. Returns the sampled
    frames' pts and {pts: RGB} (only the sampled frames are converted, to keep memory small)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames_length, duration = stream.frames, stream.duration
        clip_size = sampling_rate * t / target_fps * fps
        delta = max(frames_length - clip_size, 0)
        start_idx = delta * clip_idx / num_clips
        end_idx = start_idx + clip_size - 1
        timebase = duration / frames_length
        video_start_pts, video_end_pts = int(start_idx * timebase), int(end_idx * timebase)
        container.seek(max(video_start_pts - 1024, 0), any_frame=False, backward=True, stream=stream)
        frames, buffer_count = {}, 0
        for frame in container.decode(video=0):
            if frame.pts < video_start_pts:
                continue
            if frame.pts <= video_end_pts:
                frames[frame.pts] = frame
            else:
                buffer_count += 1
                frames[frame.pts] = frame
                if buffer_count >= 0:
                    break
        ordered = [frames[pts] for pts in sorted(frames)]
        # decode(): get_start_end_idx(len, clip_sz, 0, 1) on the decoded set, then sampling.
        index = torch.clamp(torch.linspace(0, clip_size - 1, t), 0, len(ordered) - 1).long()
        chosen = [ordered[i] for i in index.tolist()]
        return [f.pts for f in chosen], {f.pts: f.to_ndarray(format="rgb24") for f in chosen}


def cavmae_indices(n: int, fps: float, extract_frame_num=10) -> list[int]:
    """CAV-MAE's src/preprocess/extract_video_frame.py with OpenCV's seek: the frame returned
    by ``read()`` after ``set(CAP_PROP_POS_FRAMES, frame_idx - 1)`` (a negative position is
    the start)."""
    total_frame_num = min(n, int(fps * 10))
    out = []
    for i in range(extract_frame_num):
        frame_idx = int(i * (total_frame_num / extract_frame_num))
        out.append(frame_idx - 1 if frame_idx >= 1 else 0)
    return out


def tsn_indices(n: int, t: int) -> list[int]:
    """TSM's ops/dataset.py ``_get_test_indices`` (new_length 1), minus its 1-based file numbering."""
    tick = (n - 1 + 1) / float(t)
    return [int(tick / 2.0 + tick * x) for x in range(t)]


def _decode_all(path, keep=None) -> tuple[int, dict[int, np.ndarray]]:
    """Decode every video frame (skipping packets the decoder rejects); keep RGB of ``keep``."""
    kept, count = {}, 0
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams.video
                      if not s.disposition & av.stream.Disposition.attached_pic)
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError:
                break
            try:
                frames = stream.decode(packet)
            except av.FFmpegError:
                continue
            for frame in frames:
                if keep is not None and count in keep:
                    kept[count] = frame.to_ndarray(format="rgb24")
                count += 1
    return count, kept


def video_fps(path) -> float:
    """``float(container.streams.video[0].average_rate)``, as TimeSformer's ``pyav_decode``."""
    with av.open(str(path)) as container:
        return float(container.streams.video[0].average_rate)


def reference_sampled_frames(path, num_frames: int = 8, pick=None) -> tuple[list[int], dict[int, np.ndarray]]:
    """The frame indices ``pick(n)`` (default: uniform) chooses and those frames, found by
    decoding the whole clip twice (count, then pick) so that no frame list is held in memory."""
    n, _ = _decode_all(path)
    indices = pick(n) if pick is not None else reference_indices(n, num_frames)
    _, kept = _decode_all(path, set(indices))
    return indices, kept


def reference_preprocess(frames, size=224, mean=(0.45,) * 3, std=(0.225,) * 3, crops=1, scale=None):
    """TimeSformer's test transform in its own order (timesformer/datasets/kinetics.py): uint8
    T H W C -> ``utils.tensor_normalize`` -> C T H W -> ``transform.random_short_side_scale_jitter``
    with min = max = ``scale`` (default ``size``: the three-crop protocol) -> ``uniform_crop``
    (spatial_idx 1 for one crop, 0, 1, 2 for three). (3, T, S, S) or (3, 3, T, S, S)."""
    scale = size if scale is None else scale
    x = torch.from_numpy(np.stack(frames)).float() / 255.0
    x = (x - torch.tensor(mean)) / torch.tensor(std)
    x = x.permute(3, 0, 1, 2)
    height, width = x.shape[2], x.shape[3]
    if not ((width <= height and width == scale) or (height <= width and height == scale)):
        new_height, new_width = scale, scale
        if width < height:
            new_height = int(math.floor((float(height) / width) * scale))
        else:
            new_width = int(math.floor((float(width) / height) * scale))
        x = F.interpolate(x, size=(new_height, new_width), mode="bilinear", align_corners=False)
    views = []
    for spatial_idx in ([1] if crops == 1 else [0, 1, 2]):
        height, width = x.shape[2], x.shape[3]
        y_offset, x_offset = int(math.ceil((height - size) / 2)), int(math.ceil((width - size) / 2))
        if height > width:
            y_offset = {0: 0, 1: y_offset, 2: height - size}[spatial_idx]
        else:
            x_offset = {0: 0, 1: x_offset, 2: width - size}[spatial_idx]
        views.append(x[:, :, y_offset:y_offset + size, x_offset:x_offset + size])
    return views[0] if crops == 1 else torch.stack(views)


def cavmae_preprocess(frames, size=224, mean=(0.4850, 0.4560, 0.4060), std=(0.2290, 0.2240, 0.2250),
                      jpeg=True, interpolation=None):
    """CAV-MAE's frames as its code makes them: src/preprocess/extract_video_frame.py
    (``T.Resize(224)``, ``T.CenterCrop(224)``, ``T.ToTensor()`` on the PIL image, then
    ``save_image`` to a .jpg), then src/dataloader.py (``Image.open``, ``T.Resize(224, BICUBIC)``,
    ``T.CenterCrop``, ``T.ToTensor``, ``T.Normalize``). (3, T, S, S)."""
    import tempfile

    import torchvision.transforms as T
    from PIL import Image
    from torchvision.utils import save_image

    extract = T.Compose([T.Resize(size) if interpolation is None else T.Resize(size, interpolation),
                         T.CenterCrop(size), T.ToTensor()])
    load = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(mean=list(mean), std=list(std))])
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, frame in enumerate(frames):
            image = extract(Image.fromarray(frame))
            if jpeg:
                save_image(image, f"{tmp}/{i}.jpg")
                out.append(load(Image.open(f"{tmp}/{i}.jpg")))
            else:
                out.append(T.Normalize(mean=list(mean), std=list(std))(image))
    return torch.stack(out, dim=1)


# Kr and Kb of each standard's luma (ITU-R BT.601 and BT.709): the whole YUV -> RGB matrix.
KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def yuv_planes(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An 8-bit planar YUV PyAV frame's Y, U and V as float64, chroma repeated up to the luma size."""
    y, u, v = (np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width].astype(np.float64)
               for p in list(frame.planes)[:3])

    def up(c):   # each chroma sample covers ceil(luma / chroma) luma samples per axis
        rows, cols = -(-y.shape[0] // c.shape[0]), -(-y.shape[1] // c.shape[1])
        return np.repeat(np.repeat(c, rows, 0), cols, 1)[:y.shape[0], :y.shape[1]]
    return y, up(u), up(v)


def yuv_to_rgb(y, u, v, matrix: str, full_range: bool) -> np.ndarray:
    """RGB (H, W, 3) float64 in [0, 255] from YUV by the standard's definition: Y' = Kr R + Kg G
    + Kb B, Cb = (B - Y') / (2 (1 - Kb)), Cr = (R - Y') / (2 (1 - Kr)); limited range puts Y' on
    16..235 and Cb, Cr on 16..240, full range on 0..255."""
    kr, kb = KR_KB[matrix]
    scale_y, scale_c, offset_y = (255.0, 255.0, 0.0) if full_range else (219.0, 224.0, 16.0)
    luma, cb, cr = (y - offset_y) / scale_y, (u - 128) / scale_c, (v - 128) / scale_c
    r, b = luma + 2 * (1 - kr) * cr, luma + 2 * (1 - kb) * cb
    g = (luma - kr * r - kb * b) / (1 - kr - kb)
    return np.clip(np.stack([r, g, b], axis=-1) * 255, 0, 255)


def decoded_rgb_references(path) -> list[dict[str, np.ndarray]]:
    """Every decoded frame of ``path`` as {"bt601": RGB, "bt709": RGB}, each matrix written out
    on the frame's own YUV planes and range (full for yuvj* or a full-range tag)."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            full = frame.format.name.startswith("yuvj") or frame.color_range == 2
            planes = yuv_planes(frame)
            out.append({m: yuv_to_rgb(*planes, m, full) for m in KR_KB})
    return out


def kaldi_fbank(samples, sample_rate=16000, num_mel_bins=128, window="hanning", low_freq=20.0,
                frame_ms=25.0, shift_ms=10.0, preemphasis=0.97) -> np.ndarray:
    """Kaldi's fbank (compute-fbank-feats; feat/feature-window.cc, feature-fbank.cc, mel-computations.cc)
    written out in float64 numpy, with the options AST passes: no dither, snip_edges, DC offset
    removed per frame, pre-emphasis, window, zero-padded to a power-of-two FFT, power spectrum,
    HTK-style mel bank from ``low_freq`` to Nyquist, log floored at float32 epsilon, no energy.
    Returns (frames, num_mel_bins)."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    size, shift = int(sample_rate * frame_ms / 1000), int(sample_rate * shift_ms / 1000)
    if x.size < size:
        return np.zeros((0, num_mel_bins))
    count = 1 + (x.size - size) // shift                       # snip_edges=true
    frames = np.stack([x[i * shift:i * shift + size] for i in range(count)])
    frames = frames - frames.mean(axis=1, keepdims=True)       # remove_dc_offset
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - preemphasis * previous                   # x[0] -= coeff * x[0]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / (size - 1))
    frames = frames * (hann if window == "hanning" else hann ** 0.85)  # "povey": Kaldi's default
    nfft = 1 << (size - 1).bit_length()                        # round_to_power_of_two
    power = np.abs(np.fft.rfft(frames, n=nfft)) ** 2           # (count, nfft / 2 + 1)

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    low, high = mel(low_freq), mel(sample_rate / 2)
    delta = (high - low) / (num_mel_bins + 1)
    left = low + delta * np.arange(num_mel_bins)[:, None]
    centre, right = left + delta, left + 2 * delta
    bin_mel = mel(np.arange(nfft // 2) * sample_rate / nfft)[None, :]  # the Nyquist bin is unused
    bank = np.maximum(0.0, np.minimum((bin_mel - left) / (centre - left),
                                      (right - bin_mel) / (right - centre)))
    energies = power[:, : nfft // 2] @ bank.T
    return np.log(np.maximum(energies, np.finfo(np.float32).eps))


def ast_fbank(waveform, target_length=1024, mean=-4.2677393, std=4.5689974, std_scale=2.0):
    """AST's src/dataloader.py on a mono waveform, with the numpy Kaldi fbank above: mean removed,
    fbank, zero-padded or cut to ``target_length``, ``(x - mean) / (std * std_scale)``."""
    x = np.asarray(waveform, dtype=np.float64).reshape(-1)
    fbank = kaldi_fbank(x - x.mean())
    fbank = np.concatenate([fbank, np.zeros((max(0, target_length - len(fbank)), fbank.shape[1]))])
    return torch.from_numpy((fbank[:target_length] - mean) / (std * std_scale)).float()


def read_wav(path) -> torch.Tensor:
    """A 16-bit PCM wav as torchaudio.load returned it to AST (normalize=True): float32
    int16 / 32768, (channels, n). RIFF read by hand: the standard library's wave module
    refuses WAVE_FORMAT_EXTENSIBLE, which FFmpeg writes for more than two channels."""
    import struct
    blob = Path(path).read_bytes()
    assert blob[:4] == b"RIFF" and blob[8:12] == b"WAVE", "not a wav file"
    pos, channels, data = 12, None, None
    while pos + 8 <= len(blob):
        tag, size = blob[pos:pos + 4], struct.unpack("<I", blob[pos + 4:pos + 8])[0]
        body = blob[pos + 8:pos + 8 + size]
        if tag == b"fmt ":
            fmt, channels, _, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            assert fmt in (1, 0xFFFE) and bits == 16, "16-bit PCM expected"
        elif tag == b"data":
            data = np.frombuffer(body, dtype="<i2")
        pos += 8 + size + (size & 1)
    return torch.from_numpy(data.reshape(-1, channels).T.astype(np.float32) / 32768.0)


def ffmpeg_wav(src, dst, rate=16000, mono=True) -> Path:
    """What ``ffmpeg -i src -vn -ar 16000 [-ac 1] dst.wav`` writes (the references' extraction):
    the first audio stream transcoded to pcm_s16le; PyAV's encoder converts each frame with
    libswresample as the ffmpeg tool's filter graph does."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="wav") as out:
        a_in = inp.streams.audio[0]
        layout = "mono" if mono else a_in.codec_context.layout.name
        a_out = out.add_stream("pcm_s16le", rate=rate, layout=layout)
        for frame in inp.decode(a_in):
            frame.pts = None
            for packet in a_out.encode(frame):
                out.mux(packet)
        for packet in a_out.encode(None):
            out.mux(packet)
    return Path(dst)


def reference_clip_tensor(path, num_frames=8, crops=1, scale=None, pick=None, size=224) -> torch.Tensor:
    """Decode everything, pick, resize/crop/normalise (each distinct frame once: 4K is big)."""
    indices, kept = reference_sampled_frames(path, num_frames, pick)
    distinct = sorted(kept)
    done = reference_preprocess([kept[i] for i in distinct], size=size, crops=crops, scale=scale)
    position = [distinct.index(i) for i in indices]
    return done[..., position, :, :]


# ---------------------------------------------------------------------------------------------
# Synthetic corpus


@dataclass
class Case:
    """One synthetic file and what data/ must do with it."""

    name: str
    kwargs: dict | None = None          # write_clip arguments; None: made by ``make``
    error: str | None = None            # regex the ClipError reason matches; None: it loads
    has_audio: bool = True
    frames: int | None = None           # frames the clip holds, where the test cares
    make: str | None = None             # special construction (broken files)
    tags: set = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return self.error is None


_VFR_TIMES = [0, 0.04, 0.2, 0.21, 0.5, 0.9, 0.91, 1.0, 1.3, 1.5, 1.52, 1.9]

CASES = [
    Case("basic.mp4", {}, frames=50, tags={"reference"}),
    Case("odd_size.mp4", {"size": (17, 13)}, tags={"reference"}),
    Case("portrait.mp4", {"size": (36, 80)}, tags={"reference"}),
    Case("tiny.mp4", {"size": (16, 12)}, tags={"reference"}),
    Case("uhd.mp4", {"size": (3840, 2160), "duration": 0.12, "video_options": {"preset": "ultrafast"}},
         frames=3, tags={"reference"}),
    Case("vfr.mp4", {"frame_times": _VFR_TIMES}, frames=len(_VFR_TIMES), tags={"reference"}),
    Case("vfr.mkv", {"frame_times": _VFR_TIMES}, frames=len(_VFR_TIMES), tags={"reference"}),
    Case("ntsc.mp4", {"fps": 30000 / 1001, "duration": 1.0}, tags={"reference"}),
    # Short GOPs make the decoder skip whole groups of frames and restart at keyframes.
    Case("short_gop.mp4", {"duration": 4.0, "video_options": {"g": 6, "keyint_min": 6}},
         frames=100, tags={"reference"}),
    Case("open_gop.mkv", {"duration": 3.0, "video_options": {"g": 12, "x264-params": "open-gop=1"}},
         tags={"reference"}),
    Case("stereo_48k.mkv", {"channels": 2, "sample_rate": 48000}),
    Case("surround_51.mp4", {"channels": 6, "sample_rate": 48000}),
    Case("surround_71.mkv", {"channels": "7.1", "sample_rate": 96000, "size": (32, 24)}),
    Case("rate_8k.mp4", {"sample_rate": 8000}),
    Case("vp9_opus.webm", {"size": (33, 25), "channels": 2, "sample_rate": 48000}, tags={"reference"}),
    Case("mpeg4_bframes.avi", {"video_options": {"bf": 2}}, tags={"reference"}),
    Case("mpeg2.mpg", {}, tags={"reference"}),
    Case("hevc.mkv", {"video_codec": "libx265"}, tags={"reference"}),
    Case("ffv1_pcm.nut", {"size": (31, 17)}, tags={"reference"}),
    Case("mpegts.ts", {}, tags={"reference"}),
    Case("no_audio.mp4", {"audio": False}, has_audio=False),
    Case("short.mp4", {"duration": 0.2}, frames=5, tags={"reference"}),
    Case("one_frame.mp4", {"duration": 0.04}, frames=1, tags={"reference"}),
    Case("half_faststart.mp4", make="truncate_faststart", tags={"reference"}),
    # A raw H.264 stream has no timestamps: the decoder falls back to decoding every frame.
    Case("raw_stream.h264", {"container_format": "h264", "audio": False, "duration": 1.0},
         has_audio=False, tags={"reference"}),
    # Broken ones.
    Case("missing.mp4", make="missing", error="file not found"),
    Case("empty.mp4", make="empty", error="empty file"),
    Case("garbage.mp4", make="garbage", error="cannot open container"),
    Case("truncated.mp4", make="truncate", error="cannot open container"),
    # FFmpeg either refuses it or finds no stream in it, depending on where the noise starts.
    Case("header_only.mp4", make="header_garbage",
         error="no audio or video streams|cannot open container"),
    Case("audio_only.mp4", {"video": False}, error="no video stream"),
    Case("audio_only.m4a", {"video": False}, error="no video stream"),
    Case("a_folder.mp4", make="folder", error="not a regular file"),
]

_BUILT: dict[Path, dict[str, Path]] = {}


def corpus_folder(tmp_path_factory) -> Path:
    """One folder per test session, shared by the test modules that use the corpus."""
    return tmp_path_factory.getbasetemp() / "data_corpus"


def build_corpus(folder: Path) -> dict[str, Path]:
    """Write every case under ``folder`` (once per folder per session): {name: path}."""
    folder = Path(folder)
    if folder in _BUILT:
        return _BUILT[folder]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in CASES:
        path = folder / case.name
        paths[case.name] = path
        if case.kwargs is not None:
            write_clip(path, **case.kwargs)
        else:
            _make_special(case.make, path, folder)
    _BUILT[folder] = paths
    return paths


def _make_special(kind: str, path: Path, folder: Path) -> None:
    rng = np.random.default_rng(0)
    if kind == "missing":
        return
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(rng.integers(0, 256, 30000, dtype=np.uint8).tobytes())
    elif kind == "truncate":  # moov atom at the end (FFmpeg's default): nothing is readable
        whole = write_clip(folder / "_whole.mp4", duration=1.0).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "truncate_faststart":  # moov first: the first half of the frames survive
        whole = write_clip(folder / "_whole_fs.mp4", duration=2.0,
                           container_options={"movflags": "faststart"}).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "header_garbage":  # a valid 'ftyp' box, then noise
        whole = write_clip(folder / "_whole_hdr.mp4", duration=0.5).read_bytes()
        path.write_bytes(whole[:32] + rng.integers(0, 256, 30000, dtype=np.uint8).tobytes())
    elif kind == "folder":
        path.mkdir(exist_ok=True)
    else:
        raise ValueError(kind)


def case(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def link(src: Path, dst: Path) -> None:
    """Symlink a real clip into a test folder (real clips are never copied)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)
