"""How long CI takes: ``.ci/run`` on a fresh clone of this checkout, the install included. Prints JSON.

Target (issue 16): under 6 minutes on the 2-core machine. The clone gets ``../shared`` beside it
(a link to the folder that holds the real subset) and ``CI=true``, as CI has. The install runs
against an empty uv cache in a temporary folder, as on a fresh machine (``--warm-cache`` uses
yours); it is timed apart (``./run --help`` creates the environment), then ``.ci/run`` runs the
suite with ``--durations=0`` (through PYTEST_ADDOPTS) so that the slowest files can be listed.
Needs about 6 GB of free disk for the clone's environment; everything is removed afterwards.

    ./run bench ci_time [--warm-cache] [--keep]
"""
import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.paths import subset_path  # noqa: E402


def _timed(argv, cwd, env) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - started, proc


def _slowest_files(output: str, top: int = 8) -> dict[str, float]:
    """Seconds per test file (setup + call + teardown of its tests) from pytest's durations."""
    per_file = collections.Counter()
    for seconds, path in re.findall(r"^([0-9.]+)s (?:setup|call|teardown)\s+(\S+?)::", output, re.M):
        per_file[path] += float(seconds)
    return {path: round(seconds, 1) for path, seconds in per_file.most_common(top)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warm-cache", action="store_true", help="install from your uv cache, not an empty one")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = parser.parse_args()
    subset = subset_path()
    if not (subset / "manifest.csv").is_file():
        sys.exit(f"the real subset is not at {subset}: CI has it, so this measure needs it too")
    root = Path(tempfile.mkdtemp(prefix="alphafuse-ci-"))
    try:
        (root / "shared").mkdir()
        (root / "shared" / "vggsound-subset").symlink_to(subset)
        clone = root / "main"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        env = {**os.environ, "CI": "true", "PYTEST_ADDOPTS": "--durations=0"}
        env.pop("VIRTUAL_ENV", None)
        if not args.warm_cache:
            env["UV_CACHE_DIR"] = str(root / "uv-cache")
        install_s, proc = _timed([str(clone / "run"), "--help"], clone, env)
        if proc.returncode:
            sys.exit(f"the install failed:\n{proc.stderr[-3000:]}")
        test_s, proc = _timed(["bash", ".ci/run"], clone, env)
        summary = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?) in ([0-9.]+)s", proc.stdout, re.M)
        print(json.dumps({
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                                     text=True).stdout.strip(),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "install_s": round(install_s, 1),
            "ci_run_s": round(test_s, 1),
            "total_s": round(install_s + test_s, 1),
            "target_s": 360,
            "pytest": {"result": summary[-1][0], "seconds": float(summary[-1][1])} if summary else None,
            "returncode": proc.returncode,
            "slowest_files_s": _slowest_files(proc.stdout),
            "empty_uv_cache": not args.warm_cache,
        }, indent=1))
        if proc.returncode:
            print(proc.stdout[-3000:], file=sys.stderr)
            sys.exit(1)
    finally:
        if args.keep:
            print(f"kept: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
