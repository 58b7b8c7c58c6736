"""A small generated audio-visual dataset for the demo: nothing to download, a result in minutes.

Each class pairs a visual pattern with a sound. Some pairs of classes differ only in the
picture, others only in the sound, so neither modality alone can tell every class apart and
fusing both should beat either:

    red square sliding   + low hum        vs  blue square sliding + low hum     (picture only)
    red square sliding   + low hum        vs  red square sliding  + high beeps  (sound only)
    green stripes        + noise bursts   vs  green stripes       + high beeps  (sound only)
    green stripes        + noise bursts   vs  yellow ring pulsing + noise bursts (picture only)

Every clip varies (shade, speed, phase, pitch, loudness, background noise) from a seeded
generator, so the same seed writes the same dataset.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .synth import write_clip

log = logging.getLogger(__name__)

WIDTH, HEIGHT, FPS, SAMPLE_RATE = 96, 72, 12, 22050


@dataclass(frozen=True)
class DemoClass:
    name: str
    picture: str     # square, stripes, ring
    colour: tuple[int, int, int]
    sound: str       # hum, beeps, noise


CLASSES = (
    DemoClass("red slide + hum", "square", (220, 40, 40), "hum"),
    DemoClass("blue slide + hum", "square", (40, 60, 220), "hum"),
    DemoClass("red slide + beeps", "square", (220, 40, 40), "beeps"),
    DemoClass("green stripes + noise", "stripes", (40, 190, 60), "noise"),
    DemoClass("green stripes + beeps", "stripes", (40, 190, 60), "beeps"),
    DemoClass("yellow ring + noise", "ring", (230, 210, 40), "noise"),
)
SPLITS = (("train", 16), ("val", 4), ("test", 4))   # clips per class


def make_demo_dataset(root, clips_per_class: int = 24, duration: float = 4.0, seed: int = 0,
                      progress=None) -> Path:
    """Write the clips and ``manifest.csv`` (path,label,split) under ``root``; returns the manifest.

    Clips already on disk are kept (a second run reuses them); ``progress(n)`` is called per clip.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    per_split = _split_counts(clips_per_class)
    rng = np.random.default_rng(seed)
    rows = []
    for class_index, demo_class in enumerate(CLASSES):
        split_of = [s for s, n in per_split for _ in range(n)]
        for i, split in enumerate(split_of):
            variation = _variation(rng)      # drawn even for existing clips: the same seed, the same clips
            rel = Path(split) / f"c{class_index}_{i:03d}.mp4"
            if not (root / rel).exists():
                _write(root / rel, demo_class, variation, duration)
            rows.append((rel.as_posix(), demo_class.name, split))
            if progress:
                progress(1)
    manifest = root / "manifest.csv"
    tmp = manifest.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    tmp.replace(manifest)
    return manifest


def _split_counts(clips_per_class: int) -> list[tuple[str, int]]:
    if clips_per_class < 3:
        raise ValueError(f"clips_per_class must be at least 3 (one per split), got {clips_per_class}")
    total = sum(n for _, n in SPLITS)
    counts = [(name, max(1, round(clips_per_class * n / total))) for name, n in SPLITS[1:]]
    return [("train", clips_per_class - sum(n for _, n in counts)), *counts]


def _variation(rng: np.random.Generator) -> dict:
    return {"shade": rng.uniform(0.75, 1.0), "speed": rng.uniform(0.6, 1.4), "phase": rng.uniform(0, 1),
            "pitch": rng.uniform(0.92, 1.08), "loudness": rng.uniform(0.15, 0.35),
            "noise_seed": int(rng.integers(1 << 31))}


def _write(path: Path, demo_class: DemoClass, v: dict, duration: float) -> None:
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    write_clip(tmp, duration=duration, fps=FPS, size=(WIDTH, HEIGHT), sample_rate=SAMPLE_RATE,
               frame_fn=lambda i: _frame(demo_class, v, i / FPS),
               audio_fn=lambda t: _sound(demo_class.sound, v, t))
    tmp.replace(path)   # a clip is on disk whole or not at all


def _frame(c: DemoClass, v: dict, t: float) -> np.ndarray:
    frame = np.full((HEIGHT, WIDTH, 3), 30, dtype=np.uint8)
    colour = (np.array(c.colour) * v["shade"]).astype(np.uint8)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    if c.picture == "square":
        side = HEIGHT // 3
        x0 = int(((v["phase"] + 0.25 * v["speed"] * t) % 1) * (WIDTH - side))
        frame[HEIGHT // 3:HEIGHT // 3 + side, x0:x0 + side] = colour
    elif c.picture == "stripes":
        offset = 8 * v["speed"] * t + 16 * v["phase"]
        frame[((x + offset) // 8).astype(int) % 2 == 0] = colour
    else:  # a ring whose radius pulses
        radius = HEIGHT / 4 * (1 + 0.3 * np.sin(2 * np.pi * (v["speed"] * t + v["phase"])))
        dist = np.hypot(x - WIDTH / 2, y - HEIGHT / 2)
        frame[np.abs(dist - radius) < 4] = colour
    return frame


def _sound(kind: str, v: dict, t: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(v["noise_seed"]).normal(0, 0.02, t.shape)
    if kind == "hum":
        f = 180 * v["pitch"]
        signal = np.sin(2 * np.pi * f * t) + 0.5 * np.sin(2 * np.pi * 2 * f * t)
    elif kind == "beeps":
        gate = ((t * 4 * v["speed"] + v["phase"]) % 1) < 0.5
        signal = np.sin(2 * np.pi * 1400 * v["pitch"] * t) * gate
    else:  # noise bursts
        gate = ((t * 2 * v["speed"] + v["phase"]) % 1) < 0.3
        signal = np.random.default_rng(v["noise_seed"] + 1).normal(0, 0.8, t.shape) * gate
    return (v["loudness"] * signal + noise).astype(np.float32)
