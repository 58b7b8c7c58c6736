"""The one error type a bad clip produces, so the extraction runner can record it and go on."""
from __future__ import annotations


def one_line(text: object) -> str:
    """Collapse whitespace (newlines included) so a reason fits one log or HDF5 row."""
    return " ".join(str(text).split())


def unexpected_reason(exc: BaseException) -> str:
    """The one-line reason recorded for a clip whose loading raised something other than a
    ClipError (a bug or an FFmpeg surprise): one clip error, never a stopped run."""
    return one_line(f"unexpected {type(exc).__name__}: {exc}")


class ClipError(Exception):
    """A clip that cannot be turned into model input (missing, empty, corrupt, no video, ...).

    ``clip_id`` names the clip, ``reason`` says why in one line (no traceback, no temp paths).
    Picklable, so DataLoader workers can send it back to the main process.
    """

    def __init__(self, clip_id: str, reason: str):
        self.clip_id = str(clip_id)
        self.reason = one_line(reason) or "unknown error"
        super().__init__(self.clip_id, self.reason)

    def __str__(self) -> str:
        return f"{self.clip_id}: {self.reason}"

    def __reduce__(self):
        # Exception's default pickling replays ``self.args`` into __init__, which works here too,
        # but an explicit reduce keeps that true if a subclass or attribute is ever added.
        return (type(self), (self.clip_id, self.reason))
