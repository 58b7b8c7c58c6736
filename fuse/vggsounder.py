"""VGGSounder: multi-label, modality-tagged scores of a head on VGGSound clips (glue to the package).

VGGSounder (Zverev et al., the ``vggsounder`` package) re-annotates VGGSound's test set: each
clip has several labels, each tagged audible (A), visible (V) or both (AV), and meta labels for
background music, voice-over and a static image. This module only matches a split's clips to
that file and hands the head's predictions to the package's own functions:

* labels: ``vggsounder.VGGSounder`` (loaded with no meta filter, as the package's
  ``benchmark.compute_all_results`` does); ground truth per label modality from
  ``benchmark.get_gt_for_modality`` (``a``: A + AV labels, ``v``: V + AV, ``av``: AV only,
  ``all``); the meta slices: the matched clips whose ``VideoData.meta_labels`` flag is set;
* hit@k and mAP as ``benchmark.compare_labels_logits`` defines them (``hit_rate@k``: one of the
  top-k classes is one of the clip's labels of that kind; ``auc_pr``: sklearn's average
  precision per class with a positive clip, averaged), computed in :func:`_slice` on the
  softmax probabilities: that function also computes a dozen other metrics and a ROC-AUC per
  class, seconds per call, and ranks ties by quicksort where the top-1 here is the argmax that
  ``evaluate --predictions`` writes;
* confusion: ``benchmark.compute_modality_confusion`` on the top-1 with both modalities, with the
  video zeroed (the audio prediction) and with the audio zeroed (the video prediction), against
  all labels, as ``compute_all_results`` does: ``a`` is the share of clips the audio
  prediction gets right and the audio-visual one wrong, ``v`` likewise, ``av`` both.

A head over a subset of VGGSound's classes is scored in its own vocabulary: a label outside it
can never be predicted, so it is never hit (its clip still counts, as a miss unless another of its
labels is hit), and mAP averages only the head's classes. ``in_vocabulary`` says how many clips
have a label the head can predict: hit@k is at most that share.
"""
from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

LABEL_MODALITIES = ("all", "a", "v", "av")     # the package's names; all = every label
LABEL_KINDS = {"all": "every label", "a": "audible: labels tagged A or AV", "v": "visible: labels tagged V or AV",
               "av": "audible and visible: labels tagged AV"}
META_SLICES = ("background_music", "voice_over", "static_image")
LABEL_COLUMNS = ("video_id", "label", "modality", "background_music", "static_image", "voice_over")
OUTSIDE_VOCABULARY = ("labels outside the head's vocabulary can never be predicted: they are never hit (their clip "
                      "still counts) and mAP averages only the head's classes; in_vocabulary: clips with a label "
                      "the head can predict, the most hit@k can reach")
# <11-character YouTube id>_<start seconds>[_<end seconds>][.ext], as VGGSound names its clips.
_VGGSOUND_NAME = re.compile(r"(?P<yt>[A-Za-z0-9_-]{11})_(?P<start>\d{1,6})(?:_\d{1,6})?(?:\.[A-Za-z0-9]+)?")


def vggsound_id(clip_id: str) -> str | None:
    """VGGSound's ``<YouTube id>_<start:06d>`` of a clip id however the manifest named the file
    (``ID_30``, ``train/ID_000030``, ``ID_000030.mp4``, ``ID_000030_000040``), or None."""
    name = PurePosixPath(str(clip_id).replace("\\", "/")).name
    m = _VGGSOUND_NAME.fullmatch(name)
    return f"{m['yt']}_{int(m['start']):06d}" if m else None


def vggsound_classes() -> list[str]:
    """VGGSound's 309 class names, in the package's order (its data/classes.csv)."""
    import vggsounder

    path = Path(vggsounder.__file__).parent / "data" / "classes.csv"
    with open(path, encoding="utf-8", newline="") as f:
        return [row["display_name"] for row in csv.DictReader(f)]


def check_vocabulary(label_names, where: str) -> None:
    """Refuse, in one line naming three of them, a vocabulary that is not VGGSound's class names."""
    known = set(vggsound_classes())
    foreign = [n for n in label_names if n not in known]
    if foreign:
        shown = ", ".join(repr(n) for n in foreign[:3])
        raise ValueError(f"{where}: {len(foreign)} of its {len(label_names)} labels are not VGGSound classes "
                         f"({shown}); VGGSounder scores VGGSound's class names only")


def load_labels(path=None):
    """The package's ``VGGSounder`` over ``path`` (None: the file the package ships), without meta
    filters, and a description of the file: path, version, sha256, videos."""
    from importlib.metadata import version

    from vggsounder import VGGSounder

    if path is not None:
        path = Path(path)
        with open(path, encoding="utf-8", newline="") as f:   # a missing file: OSError naming it
            header = next(csv.reader(f), [])
        missing = [c for c in LABEL_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: not a VGGSounder label file (no column {', '.join(missing)}; expected "
                             f"{','.join(LABEL_COLUMNS)})")
    labels = VGGSounder(path, background_music=None, voice_over=None, static_image=None)
    file = Path(labels.csv_path)
    package = version("vggsounder")
    named = re.search(r"_(\d+(?:\.\d+)+)\.csv$", file.name)
    info = {"file": str(file), "version": named[1] if named else package if path is None else None,
            "package": package, "sha256": hashlib.sha256(file.read_bytes()).hexdigest(), "videos": len(labels)}
    return labels, info


@dataclass
class Targets:
    """A split's clips matched to VGGSounder: ``rows`` (indices into the split) and ``ids`` of the
    matched clips; ``gt``: per label modality, the package's ground truth of the matched clips
    (``id``, ``labels``) and ``in_vocabulary`` (those labels the head can predict); ``meta``:
    per meta label, the matched ids that have it."""

    vocabulary: list[str]
    rows: np.ndarray
    ids: list[str]
    unmatched: int
    labels: dict
    gt: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def match(clip_ids, label_names, labels_path=None, *, owner: str = "the head", where: str = "the split") -> Targets:
    """Match ``clip_ids`` (of the split ``where``) to VGGSounder's labels; one-line errors for a
    vocabulary (of ``owner``) that is not VGGSound's, a VGGSound clip twice in the split, and a
    split without any annotated clip."""
    from vggsounder.benchmark import get_gt_for_modality

    check_vocabulary(label_names, owner)
    labels, info = load_labels(labels_path)
    rows, ids, first = [], [], {}
    for i, clip in enumerate(clip_ids):
        vid = vggsound_id(clip)
        if vid is None or vid not in labels:
            continue
        if vid in first:
            raise ValueError(f"{where}: clips {clip_ids[first[vid]]!r} and {clip!r} are both VGGSound clip {vid}")
        first[vid] = i
        rows.append(i)
        ids.append(vid)
    if not rows:
        raise ValueError(f"{where}: none of its {len(clip_ids)} clips is in VGGSounder's labels ({info['file']}; "
                         f"VGGSounder covers VGGSound's test set, clips named <YouTube id>_<start:06d>)")
    targets = Targets(list(label_names), np.asarray(rows, dtype=np.int64), ids, len(clip_ids) - len(rows), info)
    targets.meta = {flag: {vid for vid in ids if labels[vid].meta_labels[flag]} for flag in META_SLICES}
    keep, wanted = set(label_names), set(ids)
    for modality in LABEL_MODALITIES:
        gt = get_gt_for_modality(labels, modality, wanted)
        if not len(gt):   # no clip with a label of this kind: the package's frame has no columns
            gt = gt.reindex(columns=["id", "labels"])
        gt["in_vocabulary"] = [[x for x in ls if x in keep] for ls in gt["labels"]]
        targets.gt[modality] = gt
    return targets


def score(targets: Targets, probs: dict[str, np.ndarray]) -> dict:
    """Scores of the matched clips: ``probs`` maps ``both``, ``no_video``, ``no_audio`` to
    (split clips, classes) probabilities (the head with both modalities, with video zeroed,
    with audio zeroed); the matched rows are taken here."""
    matched = {k: np.asarray(v)[targets.rows] for k, v in probs.items()}
    out = {"clips": len(targets.ids), "unmatched": targets.unmatched, "labels": targets.labels,
           "vocabulary": {"classes": len(targets.vocabulary), "vggsound_classes": len(vggsound_classes()),
                          "outside": OUTSIDE_VOCABULARY},
           "label_kinds": LABEL_KINDS}
    out.update(_slice(targets, None, matched))
    out["meta"] = {flag: _slice(targets, targets.meta[flag], matched) for flag in META_SLICES}
    return out


def evaluate_run_vggsounder(run_dir, split, split_name: str, labels_path=None, *, which: str = "best",
                            device: str = "cpu", targets: Targets | None = None) -> dict:
    """Score the head saved in ``run_dir`` on the VGGSounder clips of ``split`` (a FeatureSplit
    read from ``<split_name>.h5``) and write ``vggsounder-<split_name>.json`` into ``run_dir``
    (atomically). ``targets``: an earlier :func:`match` of this split, to skip matching again."""
    import json

    import torch

    from alphafuse.data.atomic import atomic_write_text
    from alphafuse.data.manifest import check_split_name

    from .evaluation import split_logits
    from .run import _check_matches_run, load_run

    problem = check_split_name(split_name)
    if problem:
        raise ValueError(problem)
    model, meta = load_run(run_dir, which, device)
    _check_matches_run(split, meta, model)
    if targets is None:
        targets = match(split.clip_ids, meta["label_names"], labels_path, owner=f"run {run_dir}",
                        where=f"split {split_name} ({split.path})")
    probs = {name: torch.softmax(split_logits(model, split, device, zeroed=zeroed), dim=1).numpy()
             for name, zeroed in (("both", ()), ("no_video", ("video",)), ("no_audio", ("audio",)))}
    result = {"run": str(run_dir), "split": split_name, "which": which, **score(targets, probs)}
    path = Path(run_dir) / f"vggsounder-{split_name}.json"
    atomic_write_text(path, json.dumps(result, indent=2))
    result["path"] = str(path)
    return result


def _slice(targets: Targets, ids: set | None, probs: dict[str, np.ndarray]) -> dict:
    """Metrics and confusion on the matched clips in ``ids`` (None: all).

    hit@k and mAP follow vggsounder.benchmark.compare_labels_logits (hit_rate@k: a top-k class
    is one of the labels; auc_pr: sklearn's average_precision_score per class with a positive
    clip, averaged), computed here on the head's classes only: that function also computes a
    dozen other metrics and a ROC-AUC per class, seconds per call.
    """
    position = {vid: i for i, vid in enumerate(targets.ids)}
    if ids is not None and not ids:
        return {"clips": 0, "metrics": None, "confusion": None}
    ranked = np.argsort(-probs["both"], axis=1, kind="stable")   # ties: the lower index, as argmax
    metrics = {}
    for modality, gt in targets.gt.items():
        gt = gt if ids is None else gt[gt["id"].isin(ids)]
        at, truth = _truth(gt, position, targets.vocabulary)
        entry = {"clips": len(gt), "in_vocabulary": int(truth.any(axis=1).sum())}
        for k in (1, 5):
            hits = np.take_along_axis(truth, ranked[at, :k], axis=1).any(axis=1)
            entry[f"hit@{k}"] = float(hits.mean()) if len(gt) else None
        present = np.flatnonzero(truth.any(axis=0))
        entry["map_classes"] = len(present)
        entry["map"] = _map(truth[:, present], probs["both"][at][:, present]) if len(present) else None
        metrics[modality] = entry
    gt = targets.gt["all"] if ids is None else targets.gt["all"][targets.gt["all"]["id"].isin(ids)]
    at, truth = _truth(gt, position, targets.vocabulary)
    top1 = {k: np.argmax(p, axis=1) for k, p in probs.items()}
    confusion = _confusion(gt, targets, {k: v[at] for k, v in top1.items()})
    confusion["hit@1"] = {k: float(truth[np.arange(len(at)), v[at]].mean()) for k, v in top1.items()}
    return {"clips": len(gt), "metrics": metrics, "confusion": confusion}


def _map(truth: np.ndarray, scores: np.ndarray) -> float:
    """Mean over the columns (classes with a positive clip) of sklearn's average precision; one
    call for all of them (its multi-label macro average is that mean)."""
    from sklearn.metrics import average_precision_score

    if truth.shape[1] == 1:
        return float(average_precision_score(truth[:, 0], scores[:, 0]))
    return float(average_precision_score(truth, scores, average="macro"))


def _truth(gt, position: dict, vocab) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``gt`` as indices into the matched clips, and their (clips, classes) labels in the vocabulary."""
    index = {n: j for j, n in enumerate(vocab)}
    at = np.array([position[vid] for vid in gt["id"]], dtype=np.int64)
    truth = np.zeros((len(at), len(vocab)), dtype=bool)
    for i, names in enumerate(gt["in_vocabulary"]):
        truth[i, [index[n] for n in names]] = True
    return at, truth


def _confusion(gt, targets: Targets, top1: dict) -> dict:
    """vggsounder.benchmark.compute_modality_confusion on the top-1 class (indices, one per row of ``gt``)
    with both modalities, video zeroed (the audio prediction) and audio zeroed (the video one)."""
    import pandas as pd
    from vggsounder.benchmark import compute_modality_confusion

    vocab = targets.vocabulary
    frames = [pd.DataFrame({"id": list(gt["id"]), "labels": [[vocab[j]] for j in top1[k]]})
              for k in ("both", "no_video", "no_audio")]
    truth = gt[["id", "in_vocabulary"]].rename(columns={"in_vocabulary": "labels"})
    return {k: float(v) for k, v in compute_modality_confusion(truth, *frames, vocab).items()}


def hits_top1(targets: Targets, predicted: np.ndarray) -> np.ndarray:
    """(rows, matched clips) booleans: whether each row's top-1 class (an index into the
    vocabulary, per split clip) is one of the clip's labels. For the grid's paired bootstrap."""
    position = {vid: i for i, vid in enumerate(targets.ids)}
    at, truth = _truth(targets.gt["all"], position, targets.vocabulary)
    order = np.empty_like(at)
    order[at] = np.arange(len(at))            # matched clip -> its row of truth
    predicted = np.atleast_2d(predicted)[:, targets.rows]
    return truth[order][np.arange(len(at))[None, :], predicted]


def confusion_top1(targets: Targets, both: np.ndarray, no_video: np.ndarray, no_audio: np.ndarray) -> dict:
    """The package's modality confusion (a, v, av) of one head from its top-1 class indices per split clip."""
    gt = targets.gt["all"]
    position = {vid: i for i, vid in enumerate(targets.ids)}
    at = targets.rows[[position[vid] for vid in gt["id"]]]
    return _confusion(gt, targets, {"both": np.asarray(both)[at], "no_video": np.asarray(no_video)[at],
                                    "no_audio": np.asarray(no_audio)[at]})


def format_table(result: dict) -> str:
    """A short text table of :func:`score`'s result."""
    lines = [f"VGGSounder ({result['labels']['file'].rsplit('/', 1)[-1]}, version {result['labels']['version']}): "
             f"{result['clips']} clips matched, {result['unmatched']} not in VGGSounder"]
    header = ("slice", "labels", "clips", "in vocab", "hit@1", "hit@5", "mAP")
    rows = []
    for name, part in (("all", result), *result["meta"].items()):
        for modality, m in (part["metrics"] or {}).items():
            rows.append((name.replace("_", " "), _KIND_SHORT[modality], str(m["clips"]),
                         str(m["in_vocabulary"]), _fmt(m["hit@1"]), _fmt(m["hit@5"]), _fmt(m["map"])))
        if not part["metrics"]:
            rows.append((name.replace("_", " "), "-", "0", "-", "-", "-", "-"))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    c = result["confusion"]
    lines.append(f"modality confusion (single modality right, both wrong): a {c['a']:.3f}  v {c['v']:.3f}  "
                 f"av {c['av']:.3f}   (top-1 hit: both {c['hit@1']['both']:.3f}, no video "
                 f"{c['hit@1']['no_video']:.3f}, no audio {c['hit@1']['no_audio']:.3f})")
    return "\n".join(lines)


_KIND_SHORT = {"all": "all", "a": "audible (A, AV)", "v": "visible (V, AV)", "av": "both (AV)"}


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"
