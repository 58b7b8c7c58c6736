"""Start-up time of the command line against ``import torch``, measured in one run. Prints JSON.

Target (issue 16): ``alphafuse --help`` takes at most 0.35x the time of ``python -c "import torch"``.
Each figure is the median of --repeats fresh processes, interleaved so that machine noise falls
on both alike; every command's --help is timed too, and whether it imported torch at all.

    ./run bench startup [--repeats 11]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ["extract", "fuse", "grid", "evaluate", "predict", "demo", "cache info", "cache merge"]


def _seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=os.getcwd())
    return time.perf_counter() - started


def _imports_torch(argv: list[str]) -> bool:
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    err = subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True).stderr
    return any(line.rstrip().endswith("| torch") for line in err.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    console = shutil.which("alphafuse", path=str(Path(sys.executable).parent)) or shutil.which("alphafuse")
    if console is None:
        sys.exit("the alphafuse console script is not installed in this environment (pip install -e .)")
    torch_argv = [sys.executable, "-c", "import torch"]
    help_argv = [console, "--help"]
    _seconds(torch_argv), _seconds(help_argv)                 # warm the file cache for both
    torch_times, help_times = [], []
    for _ in range(args.repeats):
        torch_times.append(_seconds(torch_argv))
        help_times.append(_seconds(help_argv))
    per_command = {}
    for command in COMMANDS:
        argv = [console, *command.split(), "--help"]
        per_command[command] = {"median_s": round(statistics.median(_seconds(argv) for _ in range(3)), 3),
                                "imports_torch": _imports_torch(argv)}
    t, h = statistics.median(torch_times), statistics.median(help_times)
    print(json.dumps({
        "cpu": f"{os.cpu_count()} cores", "repeats": args.repeats,
        "import_torch_median_s": round(t, 3), "alphafuse_help_median_s": round(h, 3),
        "ratio_help_to_import_torch": round(h / t, 3), "target_ratio": 0.35,
        "alphafuse_help_imports_torch": _imports_torch(help_argv),
        "command_help": per_command,
    }, indent=2))


if __name__ == "__main__":
    main()
