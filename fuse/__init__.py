"""fuse/: stage 2 of alphafuse, fusion heads trained on cached embeddings.

    from alphafuse.fuse import TrainConfig, load_splits, fuse_run
    splits = load_splits("cache_out")
    metrics = fuse_run(splits["train"], splits["val"], splits["test"],
                       TrainConfig(transform="pos_scalar", target="audio"), "runs/pos_audio")
    metrics = fuse_run(..., TrainConfig(head="bottleneck"), "runs/mbt")      # any registered head
    grid = run_grid(splits["train"], splits["val"], splits["test"], paper_preset(seeds=5), "grids/paper")
    print(format_summary_table(grid.summary))

Layout: heads/ (one file per head, one registry), config.py (TrainConfig), inputs.py (what a
head reads from a cache, views), train.py (the training loop), stacked.py (many concat heads
at once), evaluation.py (scores, missing modalities, a cache's own logits), run.py (run
directories), grid/ (configurations, execution, statistics, reporting).
"""
from .config import TrainConfig
from .evaluation import evaluate_backbone_logits, learnable, missing_modality_top1, split_logits
from .grid import (GridResult, configs_from_options, format_summary_table, paper_preset, parse_alphas, run_grid,
                   sweep)
from .heads import (DEFAULT_HEAD, Head, create_head, get_head, head_defaults, head_from_config, head_help,
                    head_names, register_head)
from .heads.base import FusionHead
from .heads.concat import AlphaFuseHead
from .inputs import HeadInputs, require_embeddings
from .metrics import score
from .plots import confusion_matrix_plot, learning_curves
from .run import evaluate_run, fuse_run, load_run, load_splits, write_predictions
from .stacked import train_heads_stacked
from .stats import mean_interval, paired_bootstrap
from .train import TrainResult, evaluate, predict_logits, select_best_epoch, train_epoch, train_head
from .transforms import (DEFAULT_ALPHA, MODALITIES, TARGET_ALIASES, TRANSFORM_HELP, TRANSFORMS, ScaledConcat,
                         apply_transform, resolve_target, validate_transform)

__all__ = [
    "AlphaFuseHead", "FusionHead", "Head", "DEFAULT_HEAD", "create_head", "get_head", "head_defaults",
    "head_from_config", "head_help", "head_names", "register_head", "HeadInputs", "require_embeddings",
    "score", "confusion_matrix_plot", "learning_curves",
    "evaluate_backbone_logits", "learnable", "missing_modality_top1", "split_logits",
    "evaluate_run", "fuse_run", "load_run", "load_splits", "write_predictions",
    "TrainConfig", "TrainResult", "evaluate", "predict_logits", "select_best_epoch", "train_epoch", "train_head",
    "train_heads_stacked", "GridResult", "configs_from_options", "format_summary_table", "paper_preset",
    "parse_alphas", "run_grid", "sweep", "mean_interval", "paired_bootstrap",
    "DEFAULT_ALPHA", "MODALITIES", "TARGET_ALIASES", "TRANSFORM_HELP", "TRANSFORMS", "ScaledConcat", "apply_transform",
    "resolve_target", "validate_transform",
]
