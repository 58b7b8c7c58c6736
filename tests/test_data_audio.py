"""data.audio: the references' 16 kHz 16-bit wav, down-mixes, and AST's fbank recipe.

The fbank reference is tests/media.py's float64 numpy Kaldi fbank (no torchaudio). data/ computes
it in float32 with torchaudio; the FFT's rounding is relative to a frame's loudest bin, so cells
~100 dB below it differ most: 4.7e-4 at worst over the 122 real clips (normalised units), 2e-6
on average. FBANK_MAX / FBANK_MEAN leave 4-5x of that. Measured on a real clip, a povey window,
no pre-emphasis, a mel bank from 0 Hz or no per-frame DC removal each move some cells by more
than 0.5 and the mean by more than 2e-3; the float down-mix moves loud cells by 0.076.
"""
import json

import av
import numpy as np
import pytest
import torch

from alphafuse.data import AudioConfig, ClipError, decode_audio, fbank_from_waveform, load_fbank
from alphafuse.data.synth import write_clip
from tests.media import CASES, ast_fbank, build_corpus, corpus_folder, ffmpeg_wav, read_wav

FBANK_MAX, FBANK_MEAN = 2e-3, 1e-5

OK_CASES = [c for c in CASES if c.ok]
BAD_CASES = [c for c in CASES if not c.ok and "no video stream" not in c.error]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(corpus_folder(tmp_path_factory))


def assert_fbank_close(got, want):
    assert got.shape == want.shape and got.dtype == torch.float32
    diff = (got - want).abs()
    assert diff.max().item() <= FBANK_MAX and diff.mean().item() <= FBANK_MEAN, \
        (diff.max().item(), diff.mean().item())


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


# --- fbank ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["basic.mp4", "stereo_48k.mkv", "surround_51.mp4", "rate_8k.mp4",
                                  "vp9_opus.webm", "mpeg4_bframes.avi", "short.mp4"])
def test_fbank_equals_the_numpy_kaldi_reference_on_the_decoded_waveform(corpus, case):
    waveform, has_audio = decode_audio(corpus[case])
    assert has_audio
    fbank, _ = load_fbank(corpus[case])
    assert fbank.shape == (1024, 128)
    assert_fbank_close(fbank, ast_fbank(waveform))


def test_fbank_pads_with_zeros_before_normalising_and_cuts_long_input():
    rng = np.random.default_rng(0)
    short = torch.from_numpy(rng.standard_normal((1, 16000)).astype(np.float32) * 0.1)
    fb = fbank_from_waveform(short)
    assert_fbank_close(fb, ast_fbank(short))
    # 1 s gives 98 frames; the rest is padding: zeros that were then normalised.
    padded = torch.full((1024 - 98, 128), 4.2677393 / (4.5689974 * 2))
    assert torch.allclose(fb[98:], padded)
    long = torch.from_numpy(rng.standard_normal((1, 16000 * 12)).astype(np.float32) * 0.1)
    assert_fbank_close(fbank_from_waveform(long), ast_fbank(long))


def test_fbank_accepts_1d_and_numpy_and_tiny_input():
    wave = np.random.default_rng(1).standard_normal(8000).astype(np.float32)
    assert torch.equal(fbank_from_waveform(wave), fbank_from_waveform(torch.from_numpy(wave)[None]))
    for n in (0, 1, 399):  # less than one 25 ms window: all padding, still finite
        fb = fbank_from_waveform(torch.zeros(1, n))
        assert fb.shape == (1024, 128) and torch.isfinite(fb).all()


def test_fbank_rejects_multichannel_input():
    with pytest.raises(ValueError, match="mono"):
        fbank_from_waveform(torch.zeros(2, 16000))


def test_fbank_follows_the_config():
    cfg = AudioConfig(num_mel_bins=64, target_length=200)
    wave = torch.from_numpy(np.random.default_rng(2).standard_normal((1, 32000)).astype(np.float32))
    assert fbank_from_waveform(wave, cfg).shape == (200, 64)


def test_audio_config_round_trips_through_json_and_validates():
    cfg = AudioConfig()
    assert AudioConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.to_dict() == {"sample_rate": 16000, "num_mel_bins": 128, "target_length": 1024,
                             "norm_mean": -4.2677393, "norm_std": 4.5689974,
                             "norm_std_scale": 2.0, "downmix": "ffmpeg"}
    other = AudioConfig(norm_mean=-5.081, norm_std=4.4849, norm_std_scale=1, downmix="first")
    assert AudioConfig.from_dict(json.loads(json.dumps(other.to_dict()))) == other
    for bad in [dict(sample_rate=0), dict(num_mel_bins=-1), dict(norm_std=0), dict(norm_std_scale=0),
                dict(norm_mean=float("nan")), dict(downmix="average"), dict(norm_std_scale="2")]:
        with pytest.raises(ValueError, match="AudioConfig"):
            AudioConfig(**bad)
    with pytest.raises(ValueError, match="no field window"):
        AudioConfig.from_dict({**cfg.to_dict(), "window": "povey"})


def test_audio_config_of_an_older_cache_gets_the_defaults():
    # Caches written before norm_std_scale and downmix existed: AST's 2 * std as before; the
    # down-mix is the 16-bit one (the float one was replaced on purpose).
    old = {"sample_rate": 16000, "num_mel_bins": 128, "target_length": 1024,
           "norm_mean": -4.2677393, "norm_std": 4.5689974}
    assert AudioConfig.from_dict(old) == AudioConfig()


def test_norm_std_scale_divides_as_ast_and_cavmae_do():
    wave = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 16000)).astype(np.float32))
    ast = fbank_from_waveform(wave)
    cav = fbank_from_waveform(wave, AudioConfig(norm_mean=-5.081, norm_std=4.4849, norm_std_scale=1.0))
    assert_fbank_close(ast, ast_fbank(wave))  # (x - mean) / (2 std)
    assert_fbank_close(cav, ast_fbank(wave, mean=-5.081, std=4.4849, std_scale=1.0))  # / std
    assert torch.allclose((cav * 4.4849 - 5.081), (ast * 2 * 4.5689974 - 4.2677393), atol=1e-4)


# --- decoding -----------------------------------------------------------------------------------

@pytest.mark.parametrize("rate,channels,suffix", [(44100, 1, ".mp4"), (48000, 2, ".mkv"),
                                                  (8000, 1, ".mp4"), (22050, 6, ".mkv"),
                                                  (48000, 2, ".webm")])
def test_decode_resamples_to_16k_mono_keeping_pitch_and_length(tmp_path, rate, channels, suffix):
    path = write_clip(tmp_path / f"tone{suffix}", duration=1.5, sample_rate=rate, channels=channels,
                      size=(16, 16), audio_fn=lambda t: 0.3 * np.sin(2 * np.pi * 1000.0 * t))
    waveform, has_audio = decode_audio(path)
    assert has_audio and waveform.dtype == torch.float32 and waveform.shape[0] == 1
    assert abs(waveform.shape[1] - 1.5 * 16000) < 0.1 * 16000  # encoder padding only
    middle = waveform[0, 4000:20000].numpy()
    assert abs(peak_hz(middle, 16000) - 1000.0) < 5


def test_downmix_sums_channels_so_opposite_channels_cancel(tmp_path):
    tone = lambda t: 0.3 * np.sin(2 * np.pi * 440.0 * t)  # noqa: E731
    same = write_clip(tmp_path / "same.mkv", channels=2, audio_codec="pcm_s16le", audio_fn=tone)
    opposite = write_clip(tmp_path / "opposite.mkv", channels=2, audio_codec="pcm_s16le",
                          audio_fn=lambda t: np.stack([tone(t), -tone(t)]))
    loud = decode_audio(same)[0][0, 4000:28000].abs().max().item()
    quiet = decode_audio(opposite)[0][0, 4000:28000].abs().max().item()
    assert loud > 0.25 and quiet < 1e-3


def _two_tones(t):
    return np.stack([0.5 * np.sin(2 * np.pi * 440.0 * t), 0.4 * np.sin(2 * np.pi * 1234.0 * t + 1)])


def test_stereo_becomes_half_the_sum_in_16_bit_as_ffmpeg_ac_1_writes_it(tmp_path):
    # At 16 kHz nothing is resampled: the samples are the matrix and the 16-bit rounding alone.
    # Float output would give (L + R) / sqrt(2), 41 % louder: that was the old bug.
    path = write_clip(tmp_path / "lr.mkv", channels=2, sample_rate=16000, audio_codec="pcm_s16le",
                      audio_fn=_two_tones, size=(16, 16))
    left_right = read_wav(ffmpeg_wav(path, tmp_path / "stereo.wav", mono=False)).double()
    mono, _ = decode_audio(path)
    assert mono.shape[1] == left_right.shape[1]
    half_sum = left_right.sum(0) / 2
    assert (mono[0].double() - half_sum).abs().max().item() <= 1 / 32768
    assert torch.equal(torch.round(mono * 32768), mono * 32768)  # 16-bit values
    first, _ = decode_audio(path, downmix="first")
    assert torch.equal(first[0], left_right[0].float())  # sox remix 1


def _decoded_float_planes(path) -> np.ndarray:
    """The audio decoder's own float planes (channels, samples): no libswresample involved."""
    with av.open(str(path)) as container:
        planes = [frame.to_ndarray() for frame in container.decode(container.streams.audio[0])]
    assert all(p.dtype == np.float32 and p.ndim == 2 for p in planes)   # fltp: one row per channel
    return np.concatenate(planes, axis=1)


@pytest.mark.parametrize("channels", [1, 2])
def test_16_bit_down_mix_equals_the_rule_written_out_on_the_decoded_float_planes(tmp_path, channels):
    # An independent reference for the production path (libswresample): AAC at 16 kHz decodes to
    # float planes; FFmpeg's -ac 1 for 16-bit output is (L + R) / 2 (mono: the channel itself), then
    # s16 conversion av_clip_int16(lrintf(x * 32768)), read back as int16 / 32768 like torchaudio.load.
    fn = _two_tones if channels == 2 else (lambda t: 0.6 * np.sin(2 * np.pi * 523.0 * t))
    path = write_clip(tmp_path / "aac.mp4", channels=channels, sample_rate=16000, audio_fn=fn, size=(16, 16))
    planes = _decoded_float_planes(path).astype(np.float64)
    mono = planes.mean(axis=0)
    expected = np.clip(np.rint(mono * 32768), -32768, 32767) / 32768
    got, _ = decode_audio(path)
    got = got[0].double().numpy()
    assert got.shape == expected.shape
    assert np.array_equal(np.round(got * 32768), got * 32768)              # 16-bit values
    # One 16-bit step: float32 vs float64 order of the sum can move a value across a rounding edge.
    assert np.abs(got - expected).max() <= 1 / 32768
    assert np.mean(got != expected) < 0.01
    assert np.abs(expected).max() > 0.3                                     # a real signal, not silence


@pytest.mark.parametrize("rate,channels,suffix", [(44100, 2, ".mp4"), (48000, 6, ".mkv"),
                                                  (44100, 1, ".mp4"), (22050, 2, ".webm")])
def test_clips_decode_to_the_samples_of_the_references_wav_files(tmp_path, rate, channels, suffix):
    # AST / CAV-MAE read wavs that FFmpeg wrote: the same int16 samples, and so the same fbank.
    fn = _two_tones if channels == 2 else (lambda t: 0.4 * np.sin(2 * np.pi * 700.0 * t))
    sample_rate = 48000 if suffix == ".webm" else rate  # opus needs 48 kHz
    path = write_clip(tmp_path / f"clip{suffix}", channels=channels, sample_rate=sample_rate,
                      audio_fn=fn, size=(16, 16))
    wav = read_wav(ffmpeg_wav(path, tmp_path / "ac1.wav"))  # ffmpeg -vn -ar 16000 -ac 1
    waveform, _ = decode_audio(path)
    assert torch.equal(waveform, wav)
    fbank, _ = load_fbank(path)
    assert_fbank_close(fbank, ast_fbank(wav))
    wav = read_wav(ffmpeg_wav(path, tmp_path / "all.wav", mono=False))  # ffmpeg -vn -ar 16000
    first, _ = decode_audio(path, downmix="first")
    assert torch.equal(first, wav[:1])  # then sox remix 1 (CAV-MAE)
    cfg = AudioConfig(downmix="first", norm_std_scale=1.0)
    assert_fbank_close(load_fbank(path, cfg)[0], ast_fbank(wav[0], std_scale=1.0))


def test_no_audio_stream_is_silence_of_the_clip_length(corpus):
    waveform, has_audio = decode_audio(corpus["no_audio.mp4"])
    assert not has_audio
    assert waveform.abs().max() == 0
    assert abs(waveform.shape[1] - 2.0 * 16000) <= 0.05 * 16000
    fbank, has_audio = load_fbank(corpus["no_audio.mp4"])
    assert not has_audio and torch.isfinite(fbank).all()
    assert_fbank_close(fbank, ast_fbank(waveform))


def test_audio_only_files_decode_although_they_are_not_clips(corpus):
    waveform, has_audio = decode_audio(corpus["audio_only.m4a"])
    assert has_audio and waveform.shape[1] > 16000


def test_short_audio_is_zero_padded_by_the_fbank(corpus):
    waveform, _ = decode_audio(corpus["short.mp4"])
    assert waveform.shape[1] < 0.5 * 16000
    fbank, _ = load_fbank(corpus["short.mp4"])
    pad_value = 4.2677393 / (4.5689974 * 2)
    assert torch.allclose(fbank[-900:], torch.full((900, 128), pad_value))


def test_truncated_audio_keeps_what_decodes(corpus):
    waveform, has_audio = decode_audio(corpus["half_faststart.mp4"])
    assert has_audio and 0 < waveform.shape[1] < 2.0 * 16000


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.name)
def test_unreadable_files_raise_clip_errors(corpus, case):
    import re
    with pytest.raises(ClipError) as info:
        load_fbank(corpus[case.name], clip_id="x")
    assert info.value.clip_id == "x" and re.search(case.error, info.value.reason)


@pytest.mark.parametrize("case", OK_CASES, ids=lambda c: c.name)
def test_every_clip_gives_a_finite_fbank(corpus, case):
    fbank, has_audio = load_fbank(corpus[case.name])
    assert fbank.shape == (1024, 128) and torch.isfinite(fbank).all()
    assert has_audio == case.has_audio
