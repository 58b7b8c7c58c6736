"""Clips/s of the base backbones on this machine's CPU: SDPA attention against eager attention.

    ./run bench backbone_speed [--repeats 3] [--batches 1,4] [--device cpu]

Prints one JSON object. SDPA and eager are timed alternately on the same model, so machine noise
hits both alike; figures are medians over repeats (after one warm-up call each).
"""
import argparse
import json
import platform
import statistics
import time

import torch

from alphafuse.extract import load_ast, load_timesformer


def set_fused_attention(model, fused: bool) -> None:
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused


def time_call(fn, x, device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(x)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(model, make_input, batches, repeats, device):
    results = {}
    for batch in batches:
        x = make_input(batch).to(device)
        times = {"sdpa": [], "eager": []}
        with torch.inference_mode():
            for fused in (True, False):          # warm-up
                set_fused_attention(model, fused)
                model(x)
            for _ in range(repeats):
                for name, fused in (("sdpa", True), ("eager", False)):
                    set_fused_attention(model, fused)
                    times[name].append(time_call(model, x, device))
        set_fused_attention(model, True)
        entry = {name: {"median_s": statistics.median(t), "clips_per_s": batch / statistics.median(t)}
                 for name, t in times.items()}
        entry["sdpa_speedup"] = entry["eager"]["median_s"] / entry["sdpa"]["median_s"]
        results[f"batch_{batch}"] = entry
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    torch.manual_seed(0)
    video_model = load_timesformer().to(args.device)
    audio_model = load_ast().to(args.device)
    report = {
        "device": args.device if args.device != "cpu" else f"cpu ({platform.processor() or platform.machine()}, "
                                                             f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "repeats": args.repeats,
        "timesformer_base_8x224x224": bench(video_model, lambda b: torch.randn(b, 3, 8, 224, 224),
                                            batches, args.repeats, args.device),
        "ast_base_1024x128": bench(audio_model, lambda b: torch.randn(b, 1024, 128),
                                   batches, args.repeats, args.device),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
