"""Decode-and-preprocess speed of data/ on the real VGGSound subset, beside a naive baseline.

Prints one JSON object (clips/s, higher is better):

* ``naive_per_core``: PyAV decoding every video frame at full size and converting each to RGB,
  one core (what a straightforward loader does before it even resizes).
* ``ours_per_core``: ``load_clip`` (sampled video frames resized/cropped/normalised + audio
  fbank), one core: process pinned to one CPU, FFmpeg and torch single-threaded.
* ``ours_2_workers``: the same through ``ClipDataset`` and a DataLoader with 2 worker processes.
* ``audio_only_per_core``: ``decode_audio`` alone (PyAV decode + resample to 16 kHz mono), one core.
* ``ratio_per_core`` = ours_per_core / naive_per_core; ``ratio_2_workers`` = ours_2_workers /
  naive_per_core.

Per-clip runs are interleaved (naive, ours, audio on one clip, then the next clip), so load from
other processes hits all of them alike; ``*_cpu`` figures divide by process CPU time instead of
wall time, which a busy machine disturbs less. Medians over ``--repeats`` where a pass is cheap.

    ./run bench decode_speed [--limit N] [--repeats R] [--subset DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import av  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from alphafuse.data import ClipDataset, decode_audio, load_clip, read_manifest  # noqa: E402


def naive_decode(path: Path) -> int:
    """Every frame at full size, converted to RGB: the baseline."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = 1
        n = 0
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def per_core(clips, repeats: int, naive_repeats: int) -> dict:
    """Interleaved single-core timings; returns clips/s (wall and CPU) per method."""
    totals = {name: {"wall": [0.0] * r, "cpu": [0.0] * r}
              for name, r in (("naive", naive_repeats), ("ours", repeats), ("audio", repeats))}
    for clip in clips:
        for r in range(naive_repeats):
            w, c = timed(naive_decode, clip.path)
            totals["naive"]["wall"][r] += w
            totals["naive"]["cpu"][r] += c
        for r in range(repeats):
            w, c = timed(load_clip, clip.path)
            totals["ours"]["wall"][r] += w
            totals["ours"]["cpu"][r] += c
            w, c = timed(decode_audio, clip.path)
            totals["audio"]["wall"][r] += w
            totals["audio"]["cpu"][r] += c
    n = len(clips)
    return {name: {"wall": n / statistics.median(t["wall"]), "cpu": n / statistics.median(t["cpu"])}
            for name, t in totals.items()}


def with_workers(clips, label_names, workers: int, repeats: int) -> float:
    dataset = ClipDataset(clips, label_names)
    rates = []
    for _ in range(repeats):
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=dataset.collate)
        start = time.perf_counter()
        seen = sum(len(batch["clip_id"]) + len(batch["failed"]) for batch in loader)
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv=None) -> None:
    default_subset = Path(os.environ.get("ALPHAFUSE_SUBSET", REPO.parent / "shared" / "vggsound-subset"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subset", type=Path, default=default_subset, help="folder with manifest.csv")
    parser.add_argument("--limit", type=int, default=None, help="first N present clips (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the cheap passes (median)")
    parser.add_argument("--naive-repeats", type=int, default=1, help="repeats of the naive pass")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    args = parser.parse_args(argv)

    manifest = read_manifest(args.subset / "manifest.csv")
    clips = [c for c in manifest.clips if c.path.is_file()][: args.limit]
    if not clips:
        raise SystemExit(f"no clips found under {args.subset}")

    allowed = sorted(os.sched_getaffinity(0))
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {allowed[0]})  # one core: FFmpeg's automatic threads follow this
    try:
        load_clip(clips[0].path)  # warm up imports and caches outside the timings
        single = per_core(clips, args.repeats, args.naive_repeats)
    finally:
        os.sched_setaffinity(0, set(allowed))
    workers = with_workers(clips, manifest.label_names, args.workers, 1)

    naive = single["naive"]["wall"]
    result = {
        "clips": len(clips),
        "cpus_available": len(allowed),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "naive_per_core": round(naive, 2),
        "ours_per_core": round(single["ours"]["wall"], 2),
        f"ours_{args.workers}_workers": round(workers, 2),
        "audio_only_per_core": round(single["audio"]["wall"], 2),
        "ratio_per_core": round(single["ours"]["wall"] / naive, 2),
        f"ratio_{args.workers}_workers": round(workers / naive, 2),
        "naive_per_core_cpu": round(single["naive"]["cpu"], 2),
        "ours_per_core_cpu": round(single["ours"]["cpu"], 2),
        "audio_only_per_core_cpu": round(single["audio"]["cpu"], 2),
        "ratio_per_core_cpu": round(single["ours"]["cpu"] / single["naive"]["cpu"], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
