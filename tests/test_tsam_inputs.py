"""extract/tsam_inputs.py: TSAM's 3-channel log-mel image, against a NumPy implementation of its formulas."""
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from alphafuse.data.errors import ClipError
from alphafuse.data.synth import write_clip
from alphafuse.extract.tsam_inputs import decode_first_channel, load_tsam_spectrogram, tsam_spectrogram, tsam_waveform_splits
from tests.tsm_reference import aa_resize, mel_filterbank, power_spectrogram, tsam_audio_reference

# float32 STFT and mel products against float64: ~2e-4 on log-mel values of about +-14.
TOL = 1e-3


def _wave(sample_rate, seconds, seed=0):
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("sample_rate, seconds", [(44100, 10.0), (16000, 3.0), (48000, 0.5)])
def test_log_mel_image_matches_numpy_formulas(sample_rate, seconds):
    wave = _wave(sample_rate, seconds)
    ours = tsam_spectrogram(wave, sample_rate)
    ref = tsam_audio_reference(wave, sample_rate)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    assert np.abs(ours.numpy() - ref).max() < TOL


def test_reference_comparison_sees_the_recipe():
    # Sensitivity: magnitude instead of power, or no antialiasing, moves values by far more than TOL.
    sr = 16000
    wave = _wave(sr, 4.0, seed=1)
    ours = tsam_spectrogram(wave, sr).numpy()
    power = power_spectrogram(wave, 4800, 400, 160)
    mel = mel_filterbank(sr, 4800, 224).T
    magnitude = aa_resize(np.log(mel @ np.sqrt(power) + 1e-6), (224, 224))
    assert np.abs(ours[0] - magnitude).max() > 0.5
    image = torch.from_numpy(np.log(mel @ power + 1e-6)).float()[None, None]
    plain = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear")[0, 0].numpy()
    assert np.abs(ours[0] - plain).max() > 0.05
    assert np.abs(ours[0] - ours[1]).max() > 0.05          # three different window/hop pairs


def test_silence_is_log_eps_everywhere():
    image = tsam_spectrogram(np.zeros(44100, np.float32), 44100)
    assert torch.allclose(image, torch.full_like(image, math.log(1e-6)), atol=1e-5)


def test_waveform_splits():
    assert tsam_waveform_splits(441000) == [(0, 441000)]
    # x = 2 * 1000 // (2 * 3 + 1 - 3) = 500 samples, x - x // 2 = 250 apart.
    assert tsam_waveform_splits(1000, num_segments=3, m_segments=2) == [(0, 500), (250, 750), (500, 1000)]
    several = tsam_spectrogram(_wave(16000, 3.0), 16000, num_segments=3, m_segments=2)
    assert several.shape == (3, 3, 224, 224)
    first = tsam_spectrogram(_wave(16000, 3.0)[:24000], 16000)
    assert np.abs(several[0].numpy() - first.numpy()).max() < 1e-5


def test_bad_waveforms_are_named():
    with pytest.raises(ValueError, match="window does not fit n_fft=4800 at sample_rate=96000"):
        tsam_spectrogram(np.zeros(96000, np.float32), 96000)
    with pytest.raises(ValueError, match="2000 samples is too short"):
        tsam_spectrogram(np.zeros(2000, np.float32), 16000)
    with pytest.raises(ValueError, match="expected a 1-D waveform"):
        tsam_spectrogram(np.zeros((2, 16000), np.float32), 16000)


def test_first_channel_of_a_stereo_wav_exactly(tmp_path):
    left = lambda t: 0.5 * np.sin(2 * np.pi * 440 * t)
    right = lambda t: 0.25 * np.sin(2 * np.pi * 1000 * t)
    path = write_clip(tmp_path / "stereo.nut", duration=0.5, channels=2, sample_rate=22050,
                      audio_fn=lambda t: np.stack([left(t), right(t)]))
    wave, rate, has_audio = decode_first_channel(path)
    # The file holds 16-bit samples: read them back independently, interleaved L R L R ...
    with av.open(str(path)) as container:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert rate == 22050 and has_audio
    assert np.array_equal(wave.numpy(), pcm[0::2].astype(np.float32) / 32768)
    assert not np.allclose(wave.numpy(), (pcm[0::2] + pcm[1::2]) / 65536, atol=1e-2)   # no down-mix


def test_aac_goes_through_16_bit_like_the_wav_files(tmp_path):
    path = write_clip(tmp_path / "mono.mp4", duration=1.0, sample_rate=44100)
    wave, rate, _ = decode_first_channel(path)
    with av.open(str(path)) as container:
        floats = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    expected = np.clip(np.rint(floats * 32768), -32768, 32767).astype(np.float32) / 32768
    assert rate == 44100 and np.array_equal(wave.numpy(), expected)


def test_clip_without_audio_is_silence(tmp_path):
    path = write_clip(tmp_path / "mute.mp4", duration=1.0, audio=False)
    image, has_audio = load_tsam_spectrogram(path)
    assert not has_audio and image.shape == (3, 224, 224)
    assert torch.allclose(image, torch.full_like(image, math.log(1e-6)), atol=1e-5)
    with pytest.raises(ClipError, match="file not found"):
        load_tsam_spectrogram(tmp_path / "absent.mp4")


def test_real_clip(subset_dir):
    path = next(Path(subset_dir).glob("*/*.mp4"))
    image, has_audio = load_tsam_spectrogram(path)
    assert has_audio and image.shape == (3, 224, 224)
    assert image.max() > 0 and image.std() > 1
