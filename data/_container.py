"""Opening media files with PyAV, with every failure turned into a one-line ClipError."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import av

from .errors import ClipError, one_line
from .files import file_problem

log = logging.getLogger(__name__)

# Stream disposition of cover art: an mp3 or m4a with a picture attached has a one-frame
# "video" stream that is not video; it must not hide the fact that the clip has none.
_ATTACHED_PIC = av.stream.Disposition.attached_pic


def clip_id_for(path: str | Path, clip_id: str | None) -> str:
    """The id used in errors: the caller's, else the file stem."""
    return str(clip_id) if clip_id is not None else Path(path).stem


def av_reason(exc: BaseException) -> str:
    """An FFmpeg error as one line, without the file path FFmpeg likes to append."""
    if isinstance(exc, av.FFmpegError):
        message = getattr(exc, "strerror", None) or (exc.args[1] if len(exc.args) > 1 else "")
        message = str(message or type(exc).__name__)
        # FFmpeg's own log line often says more ("moov atom not found"); keep it when present.
        detail = getattr(exc, "log", None)
        if detail and len(detail) >= 3 and detail[2]:
            message = f"{message} ({str(detail[2]).strip()})"
        return one_line(message)
    text = one_line(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


@contextmanager
def open_input(path: str | Path, clip_id: str) -> Iterator[av.container.InputContainer]:
    """Open ``path`` for reading; always closed on exit. Raises ClipError with a short reason."""
    path = Path(path)
    # A FIFO, a device, a folder or a symlink loop is one clip error, never opened (FFmpeg would
    # block on a FIFO and read /dev/zero forever).
    problem = file_problem(path)
    if problem is not None:
        raise ClipError(clip_id, f"file {problem}")
    try:
        if path.stat().st_size == 0:
            raise ClipError(clip_id, "empty file")
    except OSError as exc:  # permission denied on a parent folder, broken mounts, ...
        raise ClipError(clip_id, f"cannot read file: {exc.strerror or exc}") from None
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except PermissionError:
        raise ClipError(clip_id, "cannot read file: permission denied") from None
    except Exception as exc:  # FFmpegError and anything PyAV raises while probing
        log.debug("cannot open %s", path, exc_info=True)
        raise ClipError(clip_id, f"cannot open container: {av_reason(exc)}") from None
    try:
        if len(container.streams) == 0:
            raise ClipError(clip_id, "no audio or video streams (corrupt or not a media file)")
        yield container
    finally:
        container.close()


def find_video_stream(container) -> av.video.stream.VideoStream | None:
    """The first real video stream (cover art excluded), or None."""
    for stream in container.streams.video:
        if not (stream.disposition & _ATTACHED_PIC):
            return stream
    return None


def find_audio_stream(container) -> av.audio.stream.AudioStream | None:
    """The first audio stream, or None."""
    return container.streams.audio[0] if container.streams.audio else None


def duration_seconds(container) -> float | None:
    """The container's duration, else its longest stream's, else None when nothing says."""
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    best = None
    for stream in container.streams:
        if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
            seconds = float(stream.duration * stream.time_base)
            best = seconds if best is None else max(best, seconds)
    return best
