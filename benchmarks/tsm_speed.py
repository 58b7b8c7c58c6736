"""Extraction speed of TSM and TSAM (ResNet-50, random weights) on this machine: clips/s at batch 1
and 2, NCHW against channels-last, GFLOP per clip and achieved GFLOP/s.

    ./run bench tsm_speed [--repeats 3] [--batches 1,2] [--device cpu]

Prints one JSON object. The two memory formats are timed alternately on the same model, so
machine noise hits both alike; figures are medians over repeats after one warm-up call per
format. The loaders return channels-last models (faster on CPU). FLOPs are counted by
torch.utils.flop_counter.FlopCounterMode (convolutions and matmuls, a multiply-add counted as 2),
once per model at batch 1.
"""
import argparse
import json
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import sync
from alphafuse.extract import load_tsam, load_tsm


def gflop_per_clip(fn, inputs) -> float:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        fn(*inputs)
    return counter.get_total_flops() / 1e9 / inputs[0].shape[0]


def bench(model, make_inputs, batches, repeats, device):
    formats = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    with torch.inference_mode():
        for fmt in formats.values():                        # warm-up, once (it costs a clip each)
            model.to(memory_format=fmt)
            model.embed(*make_inputs(1, device))
    gflop = gflop_per_clip(model.embed, make_inputs(1, device))
    results = {"gflop_per_clip": round(gflop, 2)}
    for batch in batches:
        inputs = make_inputs(batch, device)
        times = {name: [] for name in formats}
        with torch.inference_mode():
            for _ in range(repeats):
                for name, fmt in formats.items():
                    model.to(memory_format=fmt)
                    sync(device)
                    start = time.perf_counter()
                    model.embed(*inputs)
                    sync(device)
                    times[name].append(time.perf_counter() - start)
        model.to(memory_format=torch.channels_last)      # as loaded
        entry = {}
        for name, t in times.items():
            median = statistics.median(t)
            entry[name] = {"median_s": round(median, 3), "clips_per_s": round(batch / median, 3),
                           "gflop_per_s": round(gflop * batch / median, 1)}
        entry["channels_last_speedup"] = round(entry["nchw"]["median_s"] / entry["channels_last"]["median_s"], 3)
        results[f"batch_{batch}"] = entry
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    tsm = load_tsm(num_segments=8).to(args.device)
    tsam = load_tsam(num_segments=16).to(args.device)

    def tsm_inputs(b, device):
        return (torch.randn(b, 3, 8, 224, 224, device=device),)

    def tsam_inputs(b, device):
        return torch.rand(b, 3, 16, 224, 224, device=device), torch.randn(b, 3, 224, 224, device=device)

    report = {
        "device": args.device if args.device != "cpu" else f"cpu ({platform.processor() or platform.machine()}, "
                                                             f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "repeats": args.repeats,
        "tsm_base_8x224": bench(tsm, tsm_inputs, batches, args.repeats, args.device),
        "tsam_base_16+1x224": bench(tsam, tsam_inputs, batches, args.repeats, args.device),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
