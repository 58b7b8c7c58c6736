"""Extraction speed on the real clips: end to end, decode only, models only, and achieved GFLOP/s.

    ./run bench extract_speed [--subset ../shared/vggsound-subset] [--tiny-clips 32] [--base-clips 4]

Prints one JSON object, everything measured in this one run:
- end to end (extract_split into a temporary cache) with tiny backbones and with base backbones;
- decode-and-preprocess only (the same DataLoader, no models) and the base models only (on
  already decoded batches), so the bottleneck is visible;
- the base models' achieved GFLOP/s beside a plain large fp32 matmul (the practical peak).
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from data import ClipDataset, read_manifest
from extract import load_ast, load_timesformer
from extract.runner import embed_batch, extract_split, preprocessing_for

REPO = Path(__file__).resolve().parent.parent


def matmul_gflops(device, n=4096, repeats=5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def model_flops_per_clip(video_model, audio_model, video_cfg, audio_cfg) -> float:
    """Forward FLOPs of both backbones for one clip (attention counted through the eager path)."""
    for m in list(video_model.modules()) + list(audio_model.modules()):
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        video_model(torch.zeros(1, 3, video_cfg.num_frames, video_cfg.img_size, video_cfg.img_size))
        audio_model(torch.zeros(1, audio_cfg.target_length, 128))
    for m in list(video_model.modules()) + list(audio_model.modules()):
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    return counter.get_total_flops()


def end_to_end(manifest, clips, video_model, audio_model, args, device):
    sub = type(manifest)(clips=clips, label_names=manifest.label_names, root=manifest.root)
    with tempfile.TemporaryDirectory() as tmp:
        s = extract_split(sub, clips[0].split, tmp, video_model, audio_model, batch_size=args.batch_size,
                          workers=args.workers, device=device, precision=args.precision)
    return {"clips": s.written + len(s.failed), "clips_per_s": s.clips_per_s,
            "data_wait_share": s.data_wait_s / max(s.data_wait_s + s.model_s, 1e-9),
            "model_share": s.model_s / max(s.data_wait_s + s.model_s, 1e-9)}


def decode_only(clips, label_names, video_cfg, audio_cfg, args):
    dataset = ClipDataset(clips, label_names, video_cfg, audio_cfg)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=dataset.collate)
    t = time.perf_counter()
    batches = list(loader)
    return len(clips) / (time.perf_counter() - t), batches


def models_only(video_model, audio_model, batches, device, precision, repeats=3):
    n = sum(len(b["clip_id"]) for b in batches)
    embed_batch(video_model, audio_model, batches[0], device, precision)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for batch in batches:
            embed_batch(video_model, audio_model, batch, device, precision)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", default=str(REPO.parent / "shared" / "vggsound-subset"))
    parser.add_argument("--tiny-clips", type=int, default=32)
    parser.add_argument("--base-clips", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()
    device = torch.device(args.device)
    manifest = read_manifest(Path(args.subset) / "manifest.csv")
    present = [c for c in manifest.clips if c.path.exists()]
    report = {"device": str(device), "precision": args.precision, "workers": args.workers,
              "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
              "matmul_fp32_gflops": matmul_gflops(device)}

    for arch, n in (("tiny", args.tiny_clips), ("base", args.base_clips)):
        clips = present[:n]
        video_model, audio_model = load_timesformer(arch=arch), load_ast(arch=arch)
        video_cfg, audio_cfg = preprocessing_for(video_model, audio_model)
        decode_rate, batches = decode_only(clips, manifest.label_names, video_cfg, audio_cfg, args)
        video_model.to(device), audio_model.to(device)
        model_rate = models_only(video_model, audio_model, batches, device, args.precision)
        entry = {"end_to_end": end_to_end(manifest, clips, video_model, audio_model, args, args.device),
                 "decode_only_clips_per_s": decode_rate, "models_only_clips_per_s": model_rate,
                 "bound_by": "models" if model_rate < decode_rate else "decoding"}
        if arch == "base":
            flops = model_flops_per_clip(video_model.cpu(), audio_model.cpu(), video_cfg, audio_cfg)
            entry["gflop_per_clip"] = flops / 1e9
            entry["models_gflops"] = flops * model_rate / 1e9
            entry["share_of_matmul_peak"] = entry["models_gflops"] / report["matmul_fp32_gflops"]
        report[arch] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
