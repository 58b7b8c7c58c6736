"""fuse/: stage 2 of alphafuse, the scaled-concat fusion head trained on cached embeddings.

    from fuse import TrainConfig, load_splits, fuse_run
    splits = load_splits("cache_out")
    metrics = fuse_run(splits["train"], splits["val"], splits["test"],
                       TrainConfig(transform="pos_scalar", target="audio"), "runs/pos_audio")
    grid = run_grid(splits["train"], splits["val"], splits["test"], paper_preset(seeds=5), "grids/paper")
    print(format_summary_table(grid.summary))
"""
from .grid import (GridResult, configs_from_options, format_summary_table, paper_preset, parse_alphas, run_grid,
                   sweep)
from .head import AlphaFuseHead, FusionHead
from .metrics import score
from .plots import confusion_matrix_plot, learning_curves
from .stats import mean_interval, paired_bootstrap
from .run import evaluate_run, fuse_run, load_run, load_splits, write_predictions
from .stacked import train_heads_stacked
from .train import TrainConfig, TrainResult, evaluate, predict_logits, select_best_epoch, train_epoch, train_head
from .transforms import (DEFAULT_ALPHA, MODALITIES, TARGET_ALIASES, TRANSFORM_HELP, TRANSFORMS, ScaledConcat,
                         apply_transform, resolve_target, validate_transform)

__all__ = [
    "AlphaFuseHead", "FusionHead", "score", "confusion_matrix_plot", "learning_curves",
    "evaluate_run", "fuse_run", "load_run", "load_splits", "write_predictions",
    "TrainConfig", "TrainResult", "evaluate", "predict_logits", "select_best_epoch", "train_epoch", "train_head",
    "train_heads_stacked", "GridResult", "configs_from_options", "format_summary_table", "paper_preset",
    "parse_alphas", "run_grid", "sweep", "mean_interval", "paired_bootstrap",
    "DEFAULT_ALPHA", "MODALITIES", "TARGET_ALIASES", "TRANSFORM_HELP", "TRANSFORMS", "ScaledConcat", "apply_transform",
    "resolve_target", "validate_transform",
]
