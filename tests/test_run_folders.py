"""Run and grid folders: one writer at a time, a folder that says what it holds, grids that resume
after a kill, and runs that know which cache they were trained on (fuse/folder.py,
fuse/grid/resume.py, fuse/provenance.py). On tests/test_fuse.py's synthetic cache."""
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

import alphafuse.fuse.grid.report as grid_report
from alphafuse.cache import CacheError, write_split
from alphafuse.fuse import TrainConfig, evaluate_run, fuse_run, load_run, load_splits
from alphafuse.fuse.commands import evaluate_command, fuse_command
from alphafuse.fuse.folder import FolderError, claim
from alphafuse.fuse.grid import paper_preset, run_grid
from tests.paths import REPO
from tests.test_fuse import BACKBONES, FAST, make_split

QUICK = TrainConfig(**{**FAST, "epochs": 2})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    write_cache(folder)
    return folder


@pytest.fixture(scope="module")
def splits(cache):
    loaded = load_splits(cache)
    return loaded["train"], loaded["val"], loaded["test"]


def grid_configs():
    return paper_preset(seeds=2, base=replace(QUICK, epochs=1))[:6]   # 3 configurations x 2 seeds, seconds


def comparable(rows):
    return [{k: v for k, v in row.items() if k != "train_seconds"} for row in rows]


# -- one writer per folder ----------------------------------------------------------------------

def test_concurrent_fuse_runs_into_one_folder_leave_one_consistent_run(splits, tmp_path):
    """Three runs of three seeds started together into one folder: one writes it, the others are
    refused in one line, and every file of the folder is of the run that wrote it."""
    out = tmp_path / "run"
    barrier = threading.Barrier(3)
    outcomes = {}

    def start(seed):
        barrier.wait()
        try:
            outcomes[seed] = fuse_run(*splits, replace(QUICK, seed=seed), out, overwrite=True)
        except (FolderError, FileExistsError) as exc:
            outcomes[seed] = exc

    threads = [threading.Thread(target=start, args=(seed,)) for seed in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [seed for seed, o in outcomes.items() if isinstance(o, dict)]
    assert len(won) == 1, outcomes
    for seed, o in outcomes.items():
        if seed != won[0]:
            assert "being written by another alphafuse command" in str(o) and "\n" not in str(o)
    _, meta = load_run(out)   # refuses a head.pt beside another run's metrics.json
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert meta["train_config"]["seed"] == metrics["config"]["seed"] == config["config"]["seed"] == won[0]
    assert meta["run_id"] == metrics["run_id"] == config["run_id"]


def test_a_locked_folder_is_refused_and_a_failed_run_leaves_no_folder(splits, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with claim(out, "run"):
        with pytest.raises(FolderError, match="being written by another alphafuse command"):
            fuse_run(*splits, QUICK, out)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("alphafuse.fuse.run.train_head", broken)
    with pytest.raises(RuntimeError):
        fuse_run(*splits, QUICK, tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()


def test_a_head_is_trusted_only_beside_the_metrics_of_its_own_run(splits, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    fuse_run(*splits, QUICK, a)
    (b / "confusion_matrix.png.tmp").parent.mkdir()
    (b / "confusion_matrix.png.tmp").write_bytes(b"half")   # a run killed mid-write, then overwritten
    fuse_run(*splits, replace(QUICK, seed=5), b, overwrite=True)
    assert not list(b.glob("*.tmp"))
    (a / "metrics.json").write_bytes((b / "metrics.json").read_bytes())   # a mix, as racing runs left
    with pytest.raises(ValueError, match="head.pt and metrics.json are of different runs"):
        load_run(a)
    (b / "metrics.json").unlink()   # stopped between head.pt and metrics.json
    with pytest.raises(ValueError, match="unfinished run"):
        evaluate_run(b, splits[2])


# -- a folder knows what it holds -----------------------------------------------------------------

def test_grid_into_a_run_folder_and_fuse_into_a_grid_folder_are_refused(splits, tmp_path):
    run, grid = tmp_path / "run", tmp_path / "grid"
    fuse_run(*splits, QUICK, run)
    run_grid(*splits, grid_configs()[:1], grid, jobs=1)
    before = {p: p.read_bytes() for d in (run, grid) for p in d.iterdir()}
    for overwrite in (False, True):
        with pytest.raises(FolderError, match=r"run holds a run \(written by fuse\); grid writes a grid"):
            run_grid(*splits, grid_configs()[:1], run, jobs=1, overwrite=overwrite)
        with pytest.raises(FolderError, match=r"grid holds a grid \(written by grid\); fuse writes a run"):
            fuse_run(*splits, QUICK, grid, overwrite=overwrite)
    assert {p: p.read_bytes() for d in (run, grid) for p in d.iterdir()} == before
    # Folders written before the marker are told apart by their files.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "results.csv").write_text("head\n")
    with pytest.raises(FolderError, match="holds a grid"):
        fuse_run(*splits, QUICK, legacy)


def test_cli_grid_into_a_run_folder_is_one_line(cache, tmp_path, monkeypatch, capsys):
    import alphafuse.cli as cli

    def main(*args):
        monkeypatch.setattr(sys, "argv", ["alphafuse", *args])
        try:
            cli.run()
            code = 0
        except SystemExit as exc:
            code = exc.code
        return code, capsys.readouterr().err

    monkeypatch.chdir(tmp_path)
    common = ["--cache-dir", str(cache), "--epochs", "1", "--hidden", "16", "--out", "here"]
    assert main("fuse", *common)[0] == 0
    config = (tmp_path / "here" / "config.json").read_bytes()
    code, err = main("grid", *common, "--transforms", "none", "--seeds", "1", "--jobs", "1")
    assert code == 1 and err.strip().count("\n") == 0 and "here holds a run (written by fuse)" in err
    assert (tmp_path / "here" / "config.json").read_bytes() == config


# -- a grid finishes or resumes -----------------------------------------------------------------

def test_grid_stopped_mid_training_resumes_the_missing_rows(splits, tmp_path):
    configs = grid_configs()
    whole = run_grid(*splits, configs, tmp_path / "whole", jobs=1)
    out = tmp_path / "grid"

    def stop_after_two(done, total, row):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_grid(*splits, configs, out, jobs=1, progress=stop_after_two)
    assert not (out / "summary.json").exists() and len(list((out / "rows").iterdir())) == 2
    trained = []
    resumed = run_grid(*splits, configs, out, jobs=1, progress=lambda done, total, row: trained.append(done))
    assert trained == [3, 4, 5, 6]   # only the four missing rows were trained
    assert comparable(resumed.rows) == comparable(whole.rows)
    np.testing.assert_array_equal(resumed.predicted, whole.predicted)
    assert (out / "summary.json").is_file() and not (out / "rows").exists()
    with pytest.raises(FileExistsError, match="already holds a grid"):
        run_grid(*splits, configs, out, jobs=1)


def test_grid_stopped_while_writing_is_not_called_finished(splits, tmp_path, monkeypatch):
    configs = grid_configs()
    out = tmp_path / "grid"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(grid_report, "bars_plot", interrupted)   # after results.csv, before summary.json
    with pytest.raises(KeyboardInterrupt):
        run_grid(*splits, configs, out, jobs=1)
    monkeypatch.undo()
    assert (out / "results.csv").is_file() and not (out / "summary.json").exists()
    (out / "summary.json.tmp").write_text("{")   # what SIGKILL leaves behind
    (out / "alpha_curve.png.tmp").write_text("")   # a file this grid does not write again
    (out / "rows" / "00000.json.tmp").write_text("{")
    trained = []
    run_grid(*splits, configs, out, jobs=1, progress=lambda done, total, row: trained.append(done))
    assert trained == []   # every row was saved: nothing to train again
    assert json.loads((out / "summary.json").read_text())["runs"] == len(configs)
    assert not [p for p in out.rglob("*.tmp")]


def test_resuming_a_grid_with_other_settings_is_refused(splits, tmp_path):
    configs = grid_configs()
    out = tmp_path / "grid"
    with pytest.raises(KeyboardInterrupt):
        run_grid(*splits, configs, out, jobs=1, progress=lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    other = [replace(c, epochs=3) for c in configs]
    with pytest.raises(FolderError, match=r"other settings \(configs.\[0\].epochs was 1, now 3\)"):
        run_grid(*splits, other, out, jobs=1)
    with pytest.raises(FolderError, match="other settings"):
        run_grid(*splits[:2], make_split("test", 48, 9), configs, out, jobs=1)   # another test split
    run_grid(*splits, other, out, jobs=1, overwrite=True)   # overwrite starts it afresh
    assert json.loads((out / ".alphafuse.json").read_text())["settings"]["configs"][0]["epochs"] == 3


GRID_SCRIPT = """
import os, signal, sys
from dataclasses import replace
from alphafuse.fuse import load_splits
from alphafuse.fuse.grid import run_grid
from tests.test_run_folders import grid_configs
s = load_splits(sys.argv[1])
def kill(done, total, row):
    if done == 3:
        os.kill(os.getpid(), signal.SIGKILL)
run_grid(s["train"], s["val"], s["test"], grid_configs(), sys.argv[2], jobs=1, progress=kill)
"""


@pytest.mark.slow
def test_grid_killed_by_sigkill_resumes(cache, splits, tmp_path):
    out = tmp_path / "grid"
    proc = subprocess.run([sys.executable, "-c", GRID_SCRIPT, str(cache), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(list((out / "rows").iterdir())) == 3 and not (out / "summary.json").exists()
    trained = []
    resumed = run_grid(*splits, grid_configs(), out, jobs=1, progress=lambda done, total, row: trained.append(done))
    assert trained == [4, 5, 6]
    whole = run_grid(*splits, grid_configs(), None, jobs=1)
    assert comparable(resumed.rows) == comparable(whole.rows)


# -- which cache a run was trained on -------------------------------------------------------------

def write_cache(folder, backbones=BACKBONES, test_seed=2):
    """Train, val and test splits (120, 48, 48 clips) of make_split's clusters in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in (make_split("train", 120, 0, backbones=backbones), make_split("val", 48, 1, backbones=backbones),
                  make_split("test", 48, test_seed, backbones=backbones)):
        write_split(folder / f"{split.split}.h5", split)


def test_evaluate_finds_the_cache_the_run_was_trained_on_or_refuses(tmp_path, monkeypatch):
    """Trained with the relative cache folder "cache" in a/, evaluated from b/, whose "cache" is
    another one: evaluate scores a/cache, refuses it once re-extracted with other clips or gone,
    and refuses b/cache (other backbone seeds) when given, naming what differs."""
    write_cache(tmp_path / "a" / "cache")
    seeded = {**BACKBONES, "audio": {**BACKBONES["audio"], "seed": 7}}
    write_cache(tmp_path / "b" / "cache", backbones=seeded)
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "a")
    fuse_command(__import__("pathlib").Path("cache"), QUICK, run, tmp_path, False, echo=lambda line: None)
    expected = evaluate_run(run, load_splits(tmp_path / "a" / "cache", ["test"])["test"])
    monkeypatch.chdir(tmp_path / "b")
    assert evaluate_command(run, "test", None, None, "best", True, echo=lambda line: None) == expected
    with pytest.raises(CacheError, match=r"differ\w* in backbones: audio.seed: 7 vs None"):
        evaluate_command(run, "test", "cache", None, "best", True, echo=lambda line: None)
    # a/cache re-extracted in place with other test clips: not the cache the run recorded.
    (tmp_path / "a" / "cache" / "test.h5").unlink()
    write_split(tmp_path / "a" / "cache" / "test.h5", make_split("test", 40, 3))
    with pytest.raises(CacheError, match=r"is not the test split run .* was trained with .*differ in num_clips"):
        evaluate_command(run, "test", None, None, "best", True, echo=lambda line: None)
    os.rename(tmp_path / "a" / "cache", tmp_path / "a" / "moved")
    with pytest.raises(ValueError, match="which is not there now: give the cache folder"):
        evaluate_command(run, "test", None, None, "best", True, echo=lambda line: None)
    config = json.loads((run / "config.json").read_text())
    assert config["cache_dir"] == str(tmp_path / "a" / "cache") == config["cache"]["cache_dir"]


def test_a_run_recording_only_a_relative_cache_path_is_refused(splits, tmp_path):
    fuse_run(*splits, QUICK, tmp_path / "run")
    path = tmp_path / "run" / "head.pt"
    saved = torch.load(path, weights_only=True)
    saved.pop("cache")   # as runs written before cache identities
    saved["cache_paths"] = {"train": "cache/train.h5"}
    torch.save(saved, path)
    with pytest.raises(ValueError, match="relative path cache/train.h5, which may name another cache"):
        evaluate_command(tmp_path / "run", "test", None, None, "best", True, echo=lambda line: None)
