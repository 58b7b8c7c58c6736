"""A torch Dataset of clips for DataLoader workers: it reports bad clips instead of raising."""
from __future__ import annotations

import functools
import logging
from typing import Sequence

import torch
from torch.utils.data import Dataset, get_worker_info

from .audio import AudioConfig
from .clip import LoadedClip, load_inputs
from .errors import ClipError, unexpected_reason
from .manifest import Clip
from .video import VideoConfig

log = logging.getLogger(__name__)

# The dataset item's key of each model input slot (the input names of ``input_specs``).
SLOT_KEYS = {"video": "video", "audio": "fbank"}


class ClipDataset(Dataset):
    """Per clip: ``{"clip_id", "video", "fbank", "label", "has_audio", "error"}``.

    ``video`` is float32 (3, T, S, S) (or (3 views, 3, T, S, S) with ``spatial_crops=3``),
    ``fbank`` float32 (target_length, num_mel_bins), ``label`` the index into ``label_names``.
    A clip that cannot be read gives ``video = fbank = None`` and ``error`` = a one-line reason;
    ``__getitem__`` never raises for a bad clip.

    Holds only paths and configs (no open files), so it pickles into DataLoader workers. Use
    ``collate_fn=dataset.collate`` (or :func:`collate_clips`) to batch.

    ``decode_threads``: FFmpeg threads per clip; None picks 1 inside a DataLoader worker (the
    workers are the parallelism) and one per core in the main process.
    """

    def __init__(self, clips: Sequence[Clip], label_names: Sequence[str],
                 video_cfg: VideoConfig = VideoConfig(), audio_cfg: AudioConfig = AudioConfig(),
                 *, decode_threads: int | None = None):
        self.clips = list(clips)
        self.label_names = list(label_names)
        self.video_cfg = video_cfg
        self.audio_cfg = audio_cfg
        self.decode_threads = decode_threads
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError("label_names has duplicates; pass the manifest's label_names")
        self._label_index = {name: i for i, name in enumerate(self.label_names)}
        unknown = sorted({c.label for c in self.clips if c.label not in self._label_index})
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise ValueError(f"{len(unknown)} clip label(s) are not in label_names: {shown}"
                             f"{' ...' if len(unknown) > 5 else ''}; use the label_names of the "
                             "manifest the clips came from")

    def __len__(self) -> int:
        return len(self.clips)

    def _threads(self) -> int:
        if self.decode_threads is not None:
            return self.decode_threads
        return 1 if get_worker_info() is not None else 0

    def __getitem__(self, i: int) -> dict:
        clip = self.clips[i]
        item = {"clip_id": clip.clip_id, "video": None, "fbank": None,
                "label": self._label_index[clip.label], "has_audio": False, "error": None}
        try:
            loaded = self._load(clip)
        except ClipError as exc:
            item["error"] = exc.reason
        except MemoryError:
            raise
        except Exception as exc:  # a bug or an FFmpeg surprise must not stop an extraction run
            item["error"] = unexpected_reason(exc)
            # One line, as every clip error; the traceback only with --verbose (debug logging).
            log.warning("%s: %s", clip.clip_id, item["error"])
            log.debug("%s: traceback of the unexpected error loading %s", clip.clip_id, clip.path, exc_info=True)
        else:
            item.update(video=loaded.video, fbank=loaded.fbank, has_audio=loaded.has_audio)
        if item["error"] is not None:
            log.debug("%s: %s", clip.clip_id, item["error"])
        return item

    def _load(self, clip) -> LoadedClip:
        return load_inputs(clip.path, self.video_cfg, self.audio_cfg, clip.clip_id, threads=self._threads())

    @property
    def collate(self):
        """collate_clips bound to this dataset's configs (picklable), for ``collate_fn``."""
        return functools.partial(collate_clips, video_cfg=self.video_cfg, audio_cfg=self.audio_cfg)


def dataset_for_specs(clips: Sequence[Clip], label_names: Sequence[str], specs: dict,
                      *, decode_threads: int | None = None) -> ClipDataset:
    """The dataset of backbones whose inputs are ``specs`` ({slot: spec}); a slot no backbone
    takes gets the generic default (its ``has_audio`` still comes from the audio side). Extraction
    and ``Backbone.preprocess`` both build their dataset here, so one clip's tensors are the same."""
    unknown = sorted(set(specs) - set(SLOT_KEYS))
    if unknown:
        raise ValueError(f"input slot {unknown[0]!r} is not one of {', '.join(SLOT_KEYS)}")
    return ClipDataset(clips, label_names, specs.get("video", VideoConfig()), specs.get("audio", AudioConfig()),
                       decode_threads=decode_threads)


def collate_clips(items: Sequence[dict], video_cfg: VideoConfig = VideoConfig(),
                  audio_cfg: AudioConfig = AudioConfig()) -> dict:
    """Batch the good items; list the failed ones.

    Returns ``clip_id`` (list), ``video`` and ``fbank`` (stacked), ``label`` (LongTensor),
    ``has_audio`` (BoolTensor) for the items without error, and ``failed``: [(clip_id, reason)].
    With no good item the tensors are empty with the trailing shapes the configs give.
    """
    good = [it for it in items if it.get("error") is None]
    failed = [(it["clip_id"], it["error"]) for it in items if it.get("error") is not None]
    if good:
        video = torch.stack([it["video"] for it in good])
        fbank = torch.stack([it["fbank"] for it in good])
    else:
        video = torch.empty((0, *video_cfg.output_shape), dtype=torch.float32)
        fbank = torch.empty((0, *audio_cfg.output_shape), dtype=torch.float32)
    return {
        "clip_id": [it["clip_id"] for it in good],
        "video": video,
        "fbank": fbank,
        "label": torch.tensor([it["label"] for it in good], dtype=torch.long),
        "has_audio": torch.tensor([bool(it["has_audio"]) for it in good], dtype=torch.bool),
        "failed": failed,
    }
