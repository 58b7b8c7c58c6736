"""Grids of fusion heads on one cache: the paper's experiments, alpha sweeps, head comparisons,
honest statistics.

Once the embeddings are cached, every transform, alpha, target, head and seed is a small head
trained on a few arrays. A grid trains them all (in parallel processes, or stacked into
batched matmuls), scores each on the test split exactly as ``fuse_run`` does, and summarises
each configuration with a 95% t-interval over seeds and a paired bootstrap interval over the
test clips of its difference from the ``none`` baseline (and between heads).

    from alphafuse.fuse import load_splits
    from alphafuse.fuse.grid import paper_preset, head_configs, run_grid, format_summary_table
    s = load_splits("cache_out")
    result = run_grid(s["train"], s["val"], s["test"], paper_preset(seeds=5), "grids/paper")
    print(format_summary_table(result))

configs.py (what to train), execution.py (training them), summary.py (statistics),
report.py and plots.py (files, table, figures).
"""
from .configs import (HEAD_AXIS, PRESETS, SCALAR_TRANSFORMS, config_key, configs_from_options, describe,
                      head_configs, pair_configs, paper_preset, parse_alphas, parse_late_weights, parse_names,
                      parse_pairs, seed_list, sweep)
from .execution import (MAX_STACK, METHODS, STACK_PARAM_BUDGET, STACKED_MAX_PARAMS, GridResult, choose_method,
                        head_parameters, run_grid, run_pair_grid, stack_size)
from .plots import TARGET_NAMES, alpha_curve_plot, bars_plot, has_alpha_curve
from .report import (ALPHA_CURVE_FILE, BARS_FILE, GRID_FILES, INTERVALS_NOTE, PREDICTIONS_FILE, RESULT_COLUMNS,
                     RESULTS_FILE, SUMMARY_CSV, SUMMARY_JSON, format_summary_table, write_grid)
from .summary import (BOUNDED_METRICS, CONFIDENCE, SUMMARY_METRICS, best_alphas, compare_heads, compare_pairs,
                      is_baseline, summarize)

__all__ = [
    "HEAD_AXIS", "PRESETS", "SCALAR_TRANSFORMS", "config_key", "configs_from_options", "describe", "head_configs",
    "pair_configs", "paper_preset", "parse_alphas", "parse_late_weights", "parse_names", "parse_pairs", "seed_list",
    "sweep", "run_pair_grid", "compare_pairs",
    "MAX_STACK", "METHODS", "STACK_PARAM_BUDGET", "STACKED_MAX_PARAMS", "GridResult", "choose_method",
    "head_parameters", "run_grid", "stack_size", "TARGET_NAMES", "alpha_curve_plot", "bars_plot", "has_alpha_curve",
    "ALPHA_CURVE_FILE", "BARS_FILE", "GRID_FILES", "INTERVALS_NOTE", "PREDICTIONS_FILE", "RESULT_COLUMNS",
    "RESULTS_FILE", "SUMMARY_CSV", "SUMMARY_JSON", "format_summary_table", "write_grid", "BOUNDED_METRICS",
    "CONFIDENCE", "SUMMARY_METRICS", "best_alphas", "compare_heads", "is_baseline", "summarize",
]
