"""The README's promises: its runnable shell blocks run as written, and every command has --help."""
import contextlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.inprocess import run_cli
from tests.paths import REPO, subset_path
from tests.readme import README, readme_world, runnable_blocks, subset_cache_dir, subset_extraction


def test_readme_marks_the_subset_workflow_runnable():
    blocks = runnable_blocks()
    assert blocks, "README lost its runnable blocks"
    assert any("extract" in cmd for block in blocks for cmd in block)


@pytest.mark.slow
def test_runnable_blocks_run_as_written(subset_dir, request, tmp_path):
    """Every command of the runnable blocks, in order, in the README's world. They run in this
    process (each ``./run`` process would pay some 8 s of imports): the command line is the
    README's, and the last command of each block goes through the real ``./run`` script."""
    work = readme_world(tmp_path, subset_dir)

    def run_block(block):
        for i, command in enumerate(block):
            argv = shlex.split(command)
            assert argv[0] == "./run", f"runnable README commands use ./run: {command}"
            if i == len(block) - 1:
                proc = subprocess.run([str(REPO / "run"), *argv[1:]], cwd=work, capture_output=True, text=True,
                                      timeout=600)
                code, out, err = proc.returncode, proc.stdout, proc.stderr
            else:
                with contextlib.chdir(work):
                    code, out, err = run_cli(*argv[1:])
            assert code == 0, f"README command failed: {command}\n{out}\n{err}"
            if argv[1:] == shared:
                # The session's shared extraction (conftest) ran this very command: it finds
                # every store finished, which proves the two are the same extraction.
                assert set(re.findall(r"(\d+) clips written", out)) == {"0"} and "nothing to do" in out, out

    shared = subset_extraction()
    first, *others = runnable_blocks()
    for block in others:       # first the blocks that extract for themselves: the shared cache
        run_block(block)       # may still be in the making on the other worker
    shutil.copytree(request.getfixturevalue("subset_cache"), work / subset_cache_dir())
    run_block(first)

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
