"""Shared fixtures. Tests that need the real VGGSound subset skip, with the reason, where it is absent."""
import contextlib
import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

# Each xdist worker gets its share of the cores, and so do the CLI processes tests start (they
# inherit OMP_NUM_THREADS): two workers of two threads on a 2-core machine spin against each
# other in OpenMP's busy-waits, and a base-size forward took 4x its time alone.
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)   # macOS: no affinity
THREADS = max(1, CORES // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import torch  # noqa: E402  (after OMP_NUM_THREADS, which torch reads once)

from tests.paths import subset_path  # noqa: E402

# xdist sends whole files to its workers (--dist loadfile). These are the longest by far, so they
# start first: sent last, one of them would run alone while the other worker idles.
FIRST = ("test_readme.py", "test_extract.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))    # stable: the rest keep their order
    for item in items:
        if "subset_cache" in item.fixturenames:       # the shared extraction below: ~40 s if it runs first
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def subset_dir() -> Path:
    path = subset_path()
    if not (path / "manifest.csv").is_file():
        reason = f"real VGGSound subset not found at {path} (set ALPHAFUSE_SUBSET to its folder)"
        if os.environ.get("CI"):
            # CI has the subset: a missing one is a broken checkout, never 29 quiet skips.
            pytest.fail(f"{reason}; CI is set, so the real-clip tests must run", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def subset_cache(subset_dir, tmp_path_factory) -> Path:
    """The cache of the README's extraction of the whole subset (tiny backbones, tokens, every
    layer), made by that very command once per test session and shared by every xdist worker:
    the first worker to take the lock extracts, the others wait and read. Read it, never write
    to it (copy it first)."""
    from tests.inprocess import run_cli
    from tests.readme import readme_world, subset_cache_dir, subset_extraction

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "subset-extraction"
    done = root.with_suffix(".done")
    with FileLock(str(root.with_suffix(".lock"))):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            work = readme_world(root, subset_dir)
            with contextlib.chdir(work):
                code, out, err = run_cli(*subset_extraction())
            assert code == 0, f"the README's extraction failed:\n{out}\n{err}"
            done.touch()
    return root / "work" / subset_cache_dir()


@pytest.fixture(autouse=True)
def _threads():
    # Every test starts with the worker's share (a test may set its own, or a CLI run change it).
    torch.set_num_threads(THREADS)
    yield
