"""Extraction speed of any registered backbones: end to end, decode only, models only, GFLOP/s,
and (with several precisions) how far bf16/fp16 embeddings are from fp32 ones.

    ./run bench extract_speed [--pairs timesformer+ast,cavmae,tsm+ast,tsam] [--arch base]
                              [--clips 4] [--device cuda] [--precisions fp32,bf16]
    ./run bench extract_speed --pairs hf:SNAPSHOT_DIR+hf:OTHER_DIR,hf:VIDEOMAE_DIR+ast

A pair is ``VIDEO+AUDIO`` or one audio-visual backbone; ``NAME:CHECKPOINT`` gives a backbone its
checkpoint (an ``hf`` backbone needs its snapshot folder). ``--arch`` goes to backbones that have it. Prints one JSON object, everything
measured in this one run:
- decode-and-preprocess only (the DataLoader, no models) and the models only (on already
  decoded batches), per precision, so the bottleneck is visible;
- the models' FLOPs per clip (torch's FlopCounterMode, eager attention) and achieved GFLOP/s
  beside a plain large matmul measured in the same run (the practical peak at that precision);
- for each precision other than fp32: the largest absolute and relative difference of its
  embeddings from the fp32 ones on the same clips;
- end to end (extract_split into a temporary cache) at the first precision.
On a GPU box this is the one script to run: base backbones, fp32 and bf16.
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from common import matmul_gflops, sync

from alphafuse.data import ClipDataset, read_manifest
from alphafuse.extract import create_backbone, get_backbone
from alphafuse.extract.embed import PRECISIONS, Roles, embed_batch
from alphafuse.extract.runner import extract_split

REPO = Path(__file__).resolve().parent.parent


def backbone_for(text: str, arch: str):
    """``NAME`` or ``NAME:CHECKPOINT`` (``hf:/path/to/snapshot``) -> the built backbone."""
    name, _, checkpoint = text.partition(":")
    options = {"arch": arch} if "arch" in get_backbone(name).options else {}
    return create_backbone(name, checkpoint or None, **options)


def roles_for(pair: str, arch: str) -> Roles:
    names = pair.split("+")
    if len(names) == 1:
        return Roles.of(backbone=backbone_for(names[0], arch))
    return Roles.of(backbone_for(names[0], arch), backbone_for(names[1], arch))


def model_flops_per_clip(roles: Roles, batch: dict) -> float:
    """Forward FLOPs of the backbones for one clip (attention counted through the eager path)."""
    modules = [m for model in roles.values() for m in model.modules() if hasattr(m, "fused_attn")]
    for m in modules:
        m.fused_attn = False
    one = {**batch, "clip_id": batch["clip_id"][:1], "video": batch["video"][:1], "fbank": batch["fbank"][:1]}
    with FlopCounterMode(display=False) as counter:
        embed_batch(roles, one, torch.device("cpu"))
    for m in modules:
        m.fused_attn = True
    return counter.get_total_flops()


def decode_only(clips, label_names, specs, args):
    dataset = ClipDataset(clips, label_names, specs["video"], specs["audio"])
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=dataset.collate)
    t = time.perf_counter()
    batches = [b for b in loader if b["clip_id"]]
    return len(clips) / (time.perf_counter() - t), batches


def models_only(roles, batches, device, precision, repeats=3):
    n = sum(len(b["clip_id"]) for b in batches)
    outputs = [embed_batch(roles, b, device, precision) for b in batches]   # warm-up, and the embeddings
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        for batch in batches:
            embed_batch(roles, batch, device, precision)
        sync(device)
        times.append(time.perf_counter() - t)
    return n / statistics.median(times), outputs


def difference(outputs, reference) -> dict:
    worst = {}
    for got, want in zip(outputs, reference):
        for name in want:
            diff = np.abs(got[name].astype(np.float64) - want[name])
            scale = np.abs(want[name]).max()
            a, r = float(diff.max()), float(diff.max() / max(scale, 1e-12))
            old = worst.get(name, {"max_abs": 0.0, "max_rel_to_max": 0.0})
            worst[name] = {"max_abs": max(old["max_abs"], a), "max_rel_to_max": max(old["max_rel_to_max"], r)}
    return worst


def end_to_end(manifest, clips, roles, args, device, precision):
    sub = type(manifest)(clips=clips, label_names=manifest.label_names, root=manifest.root)
    with tempfile.TemporaryDirectory() as tmp:
        s = extract_split(sub, clips[0].split, tmp, video_model=roles.get("video"), audio_model=roles.get("audio"),
                          backbone=roles.get("audiovisual"), batch_size=args.batch_size, workers=args.workers,
                          device=str(device), precision=precision)
    return {"clips": s.written + len(s.failed), "clips_per_s": s.clips_per_s,
            "data_wait_share": s.data_wait_s / max(s.data_wait_s + s.model_s, 1e-9)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", default=str(REPO.parent / "shared" / "vggsound-subset"))
    parser.add_argument("--pairs", default="timesformer+ast", help="comma-separated VIDEO+AUDIO pairs or AV backbones")
    parser.add_argument("--arch", default="base", choices=["base", "tiny"])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32", help="comma-separated: fp32,bf16,fp16")
    args = parser.parse_args()
    device = torch.device(args.device)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    manifest = read_manifest(Path(args.subset) / "manifest.csv")
    clips = [c for c in manifest.clips if c.path.exists()][:args.clips]
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "arch": args.arch, "clips": len(clips), "workers": args.workers, "batch_size": args.batch_size,
              "torch_threads": torch.get_num_threads(),
              "matmul_gflops": {p: matmul_gflops(device, dtype=PRECISIONS[p] or torch.float32) for p in precisions}}
    for pair in args.pairs.split(","):
        roles = roles_for(pair, args.arch)
        specs = roles.specs()
        decode_rate, batches = decode_only(clips, manifest.label_names, specs, args)
        flops = model_flops_per_clip(roles, batches[0])
        for model in roles.values():
            model.to(device)
        entry = {"decode_only_clips_per_s": decode_rate, "gflop_per_clip": flops / 1e9, "precisions": {}}
        reference = None
        for precision in precisions:
            rate, outputs = models_only(roles, batches, device, precision)
            result = {"models_only_clips_per_s": rate, "models_gflops": flops * rate / 1e9,
                      "share_of_matmul_peak": flops * rate / 1e9 / report["matmul_gflops"][precision],
                      "bound_by": "models" if rate < decode_rate else "decoding"}
            if reference is None:
                reference = outputs
            else:
                result["difference_from_" + precisions[0]] = difference(outputs, reference)
            entry["precisions"][precision] = result
        entry["end_to_end"] = end_to_end(manifest, clips, roles, args, device, precisions[0])
        report[pair] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
