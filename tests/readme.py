"""The README's runnable shell blocks, and the folder layout they are written for."""
import re
import shlex
from pathlib import Path

from tests.paths import REPO

README = (REPO / "README.md").read_text()


def runnable_blocks() -> list[list[str]]:
    """Shell blocks preceded by an ``<!-- runnable ... -->`` comment, as lists of commands."""
    pattern = re.compile(r"<!-- runnable[^>]*-->\s*```sh\n(.*?)```", re.S)
    return [[line for line in block.splitlines() if line.strip() and not line.startswith("#")]
            for block in pattern.findall(README)]


def subset_extraction() -> list[str]:
    """The README's extraction of the whole subset (the first command of its first runnable
    block), as ``./run`` arguments."""
    command = runnable_blocks()[0][0]
    argv = shlex.split(command)
    assert argv[:2] == ["./run", "extract"] and "--limit" not in argv, \
        f"the README's first runnable command is no longer the whole subset's extraction: {command}"
    return argv[1:]


def subset_cache_dir() -> str:
    """The cache folder that extraction writes, relative to the README's working folder."""
    argv = subset_extraction()
    return argv[argv.index("--cache-dir") + 1]


def readme_world(root: Path, subset_dir: Path) -> Path:
    """The layout the README's commands assume: a working folder with ../shared/vggsound-subset
    beside it. Returns the working folder."""
    work = root / "work"
    work.mkdir(parents=True)
    (root / "shared").mkdir()
    (root / "shared" / "vggsound-subset").symlink_to(subset_dir)
    return work
