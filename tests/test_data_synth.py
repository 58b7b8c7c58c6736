"""data.synth: the clip writer the tests and the demo rely on."""
import av
import numpy as np
import pytest

from alphafuse.data.synth import write_clip
from tests.media import CASES, _decode_all, build_corpus, corpus_folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(corpus_folder(tmp_path_factory))


@pytest.mark.parametrize("case", [c for c in CASES if c.frames and c.kwargs is not None],
                         ids=lambda c: c.name)
def test_clips_hold_the_frames_asked_for(corpus, case):
    assert _decode_all(corpus[case.name])[0] == case.frames


def test_streams_codecs_and_layouts_follow_the_arguments(tmp_path):
    path = write_clip(tmp_path / "a.mkv", duration=0.5, fps=10, size=(33, 25), sample_rate=22050,
                      channels=6)
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.codec_context.name, v.codec_context.width, v.codec_context.height) == ("h264", 33, 25)
        assert (a.codec_context.name, a.codec_context.sample_rate, a.codec_context.channels) == ("aac", 22050, 6)
    with av.open(str(write_clip(tmp_path / "b.webm", duration=0.3, sample_rate=48000))) as c:
        assert [s.codec_context.name for s in c.streams] == ["vp9", "opus"]


def test_frame_and_audio_functions_are_used(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frame_fn = lambda i: np.full((32, 32, 3), colours[i], np.uint8)  # noqa: E731
    path = write_clip(tmp_path / "c.nut", duration=0.3, fps=10, size=(32, 32), frame_fn=frame_fn,
                      audio_fn=lambda t: np.zeros_like(t))
    with av.open(str(path)) as c:  # ffv1 is lossless up to the yuv420p conversion
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray().ravel() for f in c.decode(audio=0)])
    assert [int(np.argmax(f[16, 16])) for f in frames] == [0, 1, 2]
    assert np.abs(audio).max() == 0


def test_bad_arguments_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="video or audio"):
        write_clip(tmp_path / "x.mp4", video=False, audio=False)
    with pytest.raises(ValueError, match="libopus"):
        write_clip(tmp_path / "x.webm", sample_rate=44100)
    with pytest.raises(ValueError, match="frame_fn"):
        write_clip(tmp_path / "x.mp4", frame_fn=lambda i: np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="increasing"):
        write_clip(tmp_path / "x.mp4", frame_times=[0, 0.5, 0.2])
