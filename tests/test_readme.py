"""The README's promises: its runnable shell blocks run as written, and every command has --help."""
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.paths import REPO, subset_path

README = (REPO / "README.md").read_text()


def runnable_blocks() -> list[list[str]]:
    """Shell blocks preceded by an ``<!-- runnable ... -->`` comment, as lists of commands."""
    pattern = re.compile(r"<!-- runnable[^>]*-->\s*```sh\n(.*?)```", re.S)
    return [[line for line in block.splitlines() if line.strip() and not line.startswith("#")]
            for block in pattern.findall(README)]


def test_readme_marks_the_subset_workflow_runnable():
    blocks = runnable_blocks()
    assert blocks, "README lost its runnable blocks"
    assert any("extract" in cmd for block in blocks for cmd in block)


def test_runnable_blocks_run_as_written(subset_dir, tmp_path):
    # Lay out the README's world: the commands run in a working folder with ../shared beside it.
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "vggsound-subset").symlink_to(subset_dir)
    def run_block(block):
        for command in block:
            argv = shlex.split(command)
            assert argv[0] == "./run", f"runnable README commands use ./run: {command}"
            proc = subprocess.run([str(REPO / "run"), *argv[1:]], cwd=work, capture_output=True, text=True,
                                  timeout=600)
            assert proc.returncode == 0, f"README command failed: {command}\n{proc.stdout}\n{proc.stderr}"

    # The blocks are independent workflows (each writes its own folders): run them side by side,
    # as two users would, each command in order within its block.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for done in [pool.submit(run_block, block) for block in runnable_blocks()]:
            done.result()
    assert len(list((work / "subset-cache").glob("*/train.h5"))) == 2     # TimeSformer's and AST's stores
    assert (work / "subset-runs" / "neg" / "metrics.json").exists()
    assert (work / "subset-runs" / "neg" / "vggsounder-train.json").exists()   # its train split has VGGSounder clips
    assert (work / "subset-grid" / "results.csv").exists()
    assert (work / "subset-heads" / "summary.json").exists()
    assert (work / "subset-runs" / "cavmae-probe" / "metrics.json").exists()
    for cache in ("subset-tsm", "subset-tsam", "subset-views"):
        assert list((work / cache).glob("*/train.h5")), cache
    # Adding CAV-MAE's audio reused TimeSformer's store: three stores, one video.
    assert sorted(p.parent.name.split("-")[0] for p in (work / "subset-pairs").glob("*/train.h5")) == \
        ["ast", "cavmae", "timesformer"]
    assert (work / "subset-pairs-grid" / "summary.json").exists()


def test_quick_start_is_two_commands():
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", quick, re.S)[0].strip().splitlines()
    assert [c.split("#")[0].split() for c in commands] == [["./run", "demo"], ["./run", "test"]]
    assert "./run test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.parametrize("command", [[], ["extract"], ["fuse"], ["evaluate"], ["predict"], ["grid"], ["demo"],
                                     ["cache", "info"], ["cache", "merge"]])
def test_every_command_explains_itself(command):
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), *command, "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and len(proc.stdout.splitlines()) > 5


def test_subset_path_is_where_the_readme_says():
    assert "../shared/vggsound-subset" in README
    assert subset_path().name == "vggsound-subset"
