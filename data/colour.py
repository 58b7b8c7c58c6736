"""Decoded YUV frames to RGB with the matrix each reference's own tools use.

A YUV frame is turned into RGB by a 3x3 matrix chosen from the stream's colour tag (BT.709 on
most HD uploads, BT.601 on SD and untagged ones). Which matrix a tool applies is not the same
everywhere, and the difference is 2 levels of 255 on average, 20 or more on saturated pixels:

* ``"stream"``: the stream's tagged matrix (BT.601 when untagged) and range. PyAV >= 17
  (``VideoFrame.reformat`` calls ``sws_scale_frame`` with the frame's colour tags; PyAV-Org/PyAV
  issue #2230) and OpenCV 5.1 (measured) do this; alphafuse's TimeSformer input uses it. Older
  PyAV converted with BT.601 unless told otherwise (PyAV-Org/PyAV issue #873), which is what
  TimeSformer's ``decoder.py`` saw with the PyAV of its time.
* ``"bt601"``: BT.601 whatever the tag, the range still the frame's (limited unless tagged
  full or decoded as ``yuvj*``). What the references' tools do:
  - CAV-MAE ``src/preprocess/extract_video_frame.py`` ``extract_frame`` reads frames with
    ``cv2.VideoCapture``; OpenCV 4.6 (``requirements_a5.txt`` pins opencv-python==4.6.0.66)
    converts with swscale's default matrix, BT.601 (``SWS_CS_DEFAULT``), whatever the tag. The
    same swscale conversion is called here: bit for bit OpenCV 4.6's on the first 10 frames of
    all 122 clips of the VGGSound subset, 34 of them tagged BT.709 (measured).
  - TSM ``tools/vid2img_kinetics.py`` and TSAM ``video2frames.py`` let ffmpeg write JPEGs: the
    mjpeg encoder takes the stream's YUV as it is (only the range is widened to full, to
    ``yuvj420p``), so the JPEG holds BT.709-coded YUV on tagged clips, and Pillow's JPEG
    decoder (libjpeg, JFIF) turns it into RGB with the full-range BT.601 matrix.
"""
from __future__ import annotations

import numpy as np

from .errors import ClipError

YUV_MATRICES = ("stream", "bt601")


def check_yuv_matrix(name: str, value) -> str:
    """``value`` if it names a rule of :data:`YUV_MATRICES`, else a ValueError naming ``name``."""
    if value not in YUV_MATRICES:
        raise ValueError(f"{name} must be one of {', '.join(YUV_MATRICES)}, got {value!r}")
    return value


def frame_to_rgb(frame, clip_id: str, yuv_matrix: str = "stream") -> np.ndarray:
    """uint8 (H, W, 3) RGB of a decoded ``av.VideoFrame``, converted by swscale with ``yuv_matrix``.

    ``"bt601"`` passes ``src_colorspace=ITU601`` and leaves the range to the frame, exactly as
    an ``SwsContext`` without colourspace details does (a ``yuvj*`` frame is full range, any
    other limited unless tagged otherwise).
    """
    import av   # here, not at the top: VideoConfig validates with this module and stays light

    from ._container import av_reason

    kwargs = {"src_colorspace": "ITU601"} if yuv_matrix == "bt601" else {}
    try:
        return frame.to_ndarray(format="rgb24", **kwargs)
    except (av.FFmpegError, ValueError) as exc:
        raise ClipError(clip_id, f"cannot convert video frames to RGB: {av_reason(exc)}") from None
