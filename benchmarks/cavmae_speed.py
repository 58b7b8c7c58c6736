"""CAV-MAE base on this machine: clips/s for a clip of one fbank and 10 frames, GFLOP per clip.

    python benchmarks/cavmae_speed.py [--batches 1,4] [--frames 10] [--repeats 3] [--device cpu]

A clip is what CAV-MAE's 10-frame evaluation needs: the audio tower once (1024 x 128 fbank),
the video tower on each frame, and the shared block on cat(audio tokens, frame tokens) per frame
(``model.embed(fbank, frames)`` with frames of shape (B, F, 3, 224, 224)). Random weights: the
speed does not depend on them. Prints one JSON object: per batch size the median of ``repeats``
timed calls (after one warm-up call at the smallest batch), the FLOPs of one clip counted by
torch's FlopCounterMode through the eager attention path, split by tower, the achieved GFLOP/s,
and a large fp32 matmul's GFLOP/s as the practical peak. About a minute on 2 CPU cores.
"""
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from common import matmul_gflops, sync
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from alphafuse.extract import load_cavmae  # noqa: E402


def inputs(batch, frames, device):
    g = torch.Generator().manual_seed(batch)
    return (torch.randn(batch, 1024, 128, generator=g).to(device),
            torch.randn(batch, frames, 3, 224, 224, generator=g).to(device))


def clip_flops(model, frames) -> dict:
    """FLOPs of one clip, in total and per part (eager attention, so its matmuls are counted)."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(*inputs(1, frames, torch.device("cpu")))  # through __call__, so modules get their names
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    by_module = counter.get_flop_counts()

    def total(name):  # a module, or the blocks of a ModuleList (never called itself, so not counted as one)
        if name in by_module:
            return sum(by_module[name].values())
        depth = name.count(".") + 1
        return sum(sum(v.values()) for k, v in by_module.items() if k.startswith(name + ".") and k.count(".") == depth)

    # blocks_u runs once on the audio tokens ('a'), and per frame on the frame's tokens ('v') and
    # on the joint sequence; the counter attributes all of them to blocks_u.
    return {"total": counter.get_total_flops(),
            "audio_stream": total("CAVMAE.patch_embed_a") + total("CAVMAE.blocks_a"),
            "video_streams": total("CAVMAE.patch_embed_v") + total("CAVMAE.blocks_v"),
            "shared_block": total("CAVMAE.blocks_u")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    batches = sorted(int(b) for b in args.batches.split(","))

    model = load_cavmae(arch="base")
    flops = clip_flops(model, args.frames)
    model.to(device)
    report = {"device": str(device), "cpu": platform.processor() or platform.machine(),
              "torch_threads": torch.get_num_threads(), "frames_per_clip": args.frames,
              "repeats": args.repeats, "matmul_fp32_gflops": matmul_gflops(device),
              "gflop_per_clip": flops["total"] / 1e9,
              "gflop_per_clip_by_part": {k: v / 1e9 for k, v in flops.items() if k != "total"}}
    with torch.inference_mode():
        model.embed(*inputs(batches[0], args.frames, device))  # warm-up
        for batch in batches:
            fbank, frames = inputs(batch, args.frames, device)
            times = []
            for _ in range(args.repeats):
                sync(device)
                t = time.perf_counter()
                model.embed(fbank, frames)
                sync(device)
                times.append(time.perf_counter() - t)
            median = statistics.median(times)
            report[f"batch_{batch}"] = {
                "median_s": median, "times_s": times, "clips_per_s": batch / median,
                "achieved_gflops": flops["total"] * batch / median / 1e9}
    for batch in batches:
        report[f"batch_{batch}"]["share_of_matmul_peak"] = (
            report[f"batch_{batch}"]["achieved_gflops"] / report["matmul_fp32_gflops"])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
