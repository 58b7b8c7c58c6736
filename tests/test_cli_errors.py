"""Every bad input a user can type ends in one line naming the flag, key or file: never a traceback.

The commands run in this process through the console entry point (cli.run), which is what a
user's shell calls; one test runs a real process, for Ctrl-C.
"""
import os
import signal
import subprocess
import sys
import threading

import pytest

from tests.paths import REPO
from tests.inprocess import run_cli


class Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


@pytest.fixture
def work(tmp_path, monkeypatch, capsys):
    (tmp_path / "m.csv").write_text("path,label,split\na.mp4,x,train\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(args, cwd):
    """The console entry point in this process (the imports are paid once): exit code and stderr."""
    code, _, err = run_cli(*args)
    return Result(code, err)


def _error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert proc.returncode not in (0, 130) and len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("toml, message", [
    ('video_checkpont = "x.pyth"', "unknown setting 'video_checkpont' (did you mean 'video_checkpoint'?)"),
    ('batch_size = "4"', "batch_size must be an integer, got '4'"),
    ('hidden = "a,b"', "hidden must be integers such as 1024,512, got 'a,b'"),
    ("workers = -1", "workers must be at least 0, got -1"),
    ('precision = "fp8"', "precision must be one of fp32, bf16, fp16, got 'fp8'"),
    ("[extract]\nlimit = 0", "extract.limit must be at least 1, got 0"),
    ("[backbones]\nframes = 3", "[backbones] frames: no selected backbone"),
    ("[backbones.timesformr]\nnum_frames = 3", "no backbone is called 'timesformr'"),
    ("[backbones]\nnum_frames = \"8\"", "backbone option timesformer.num_frames must be a int"),
    ("manifest = [", "not a readable TOML file"),
    # Integers beyond 64 bits: the setting and its range, not "Overflow when unpacking long long".
    ("seed = 99999999999999999999999", "seed must be an integer from 0 to 9223372036854775807, got 9999"),
    ("[backbones]\nnum_frames = 99999999999999999999999",
     "backbone option timesformer.num_frames must be an integer from -9223372036854775808 to 9223372036854775807"),
])
def test_config_file_mistakes_are_one_line_naming_the_key(work, toml, message):
    (work / "alphafuse.toml").write_text(f'manifest = "m.csv"\ncache_dir = "c"\narch = "tiny"\n{toml}\n'
                                         if not toml.startswith("manifest") else toml)
    line = _error_line(_run(["extract"], work))
    assert message in line
    assert not (work / "c").exists()


def test_a_single_split_name_is_one_split_not_its_letters(work):
    (work / "alphafuse.toml").write_text('manifest = "m.csv"\ncache_dir = "c"\nsplits = "val"\n')
    assert "split 'val' is not in the manifest (it has train)" in _error_line(_run(["extract"], work))


@pytest.mark.parametrize("args, message", [
    (["extract", "--manifest", "m.csv", "--cache-dir", "c", "--limit", "-1"], "--limit must be at least 1, got -1"),
    (["extract", "--manifest", "m.csv", "--cache-dir", "c", "--backbone-opt", "frames=3"],
     "no selected backbone has an option 'frames'"),
    (["extract", "--manifest", "m.csv", "--cache-dir", "c", "--backbone-opt", "num_frames=many"],
     "timesformer.num_frames must be a int, got 'many'"),
    (["extract", "--manifest", "m.csv", "--cache-dir", "c", "--shard", "3/2"], "shard K/N needs K in 0..N-1"),
    (["extract", "--cache-dir", "c"], "no manifest: pass --manifest or put manifest = ... in alphafuse.toml"),
    (["extract", "--manifest", "absent.csv", "--cache-dir", "c"], "absent.csv"),
    (["fuse", "--cache-dir", "nowhere"], "nowhere/train.h5: no such cache file"),
    (["fuse", "--cache-dir", "nowhere", "--device", "cuda"] if not __import__("torch").cuda.is_available()
     else ["fuse", "--cache-dir", "nowhere"], "cuda" if not __import__("torch").cuda.is_available() else "nowhere"),
    (["fuse", "--cache-dir", "c", "--transform", "pos_scalar", "--alpha", "0.5"], "pos_scalar needs alpha > 1, got 0.5"),
    (["fuse", "--cache-dir", "c", "--seed", str(2 ** 64)], "--seed must be an integer from 0 to 9223372036854775807"),
    (["fuse", "--cache-dir", "c", "--seed", "-1"], "--seed must be an integer from 0 to 9223372036854775807, got -1"),
    (["grid", "--cache-dir", "c", "--preset", "paper", "--epochs", str(10 ** 40)],
     "--epochs must be an integer from 1 to 9223372036854775807, got an integer of 133 bits"),
])
def test_bad_flags_are_one_line_naming_the_flag(work, args, message):
    assert message in _error_line(_run(args, work))


def test_predict_top_k_must_be_positive(work):
    (work / "run").mkdir()
    proc = _run(["predict", "a.mp4", "--run", "run", "--top-k", "-1"], work)
    assert proc.returncode == 2 and "--top-k" in proc.stderr


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_an_empty_or_truncated_head_file_is_named(work, content):
    (work / "run").mkdir()
    (work / "run" / "head.pt").write_bytes(content)
    line = _error_line(_run(["evaluate", "--run", "run"], work))
    assert "run/head.pt" in line


def test_a_cache_dir_that_is_a_file_is_named(work):
    (work / "m.csv").write_text("path,label,split\n")
    (work / "afile").write_text("")
    from alphafuse.data.synth import write_clip
    write_clip(work / "a.mp4")
    (work / "m.csv").write_text("path,label,split\na.mp4,x,train\n")
    line = _error_line(_run(["extract", "--manifest", "m.csv", "--cache-dir", "afile", "--arch", "tiny",
                             "--workers", "0"], work))
    assert "cannot create afile/timesformer-" in line and "not a directory" in line


@pytest.mark.slow
def test_ctrl_c_exits_130_without_a_traceback(work):
    # A base-size extraction on CPU: interrupted while it loads or runs the models.
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "extract", "--manifest", "m.csv",
                             "--cache-dir", "c", "--arch", "base", "--workers", "0"], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    # Wait for what shows the models are built (their random-weight warning), not for a guessed time;
    # a watchdog ends the process if it never comes, so the test fails instead of hanging.
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "random weights" in line:
            break
    assert any("random weights" in line for line in seen), "".join(seen)
    os.killpg(proc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    watchdog.cancel()
    assert proc.returncode == 130, "".join(seen) + err
    assert "Traceback" not in "".join(seen) + err


@pytest.fixture
def small_cache(work):
    from alphafuse.cache import write_split
    from tests.test_fuse import make_split

    for split in (make_split("train", 60, 0), make_split("val", 24, 1), make_split("test", 24, 2)):
        write_split(work / "cache" / f"{split.split}.h5", split)
    return work / "cache"


@pytest.mark.parametrize("args, message", [
    (["fuse", "--epochs", "0"], "--epochs must be at least 1"),
    (["fuse", "--lr", "-1"], "lr must be a positive number"),
    (["fuse", "--dropout", "1.5"], "dropout must be in [0, 1)"),
    (["fuse", "--modality-dropout", "-0.1"], "modality_dropout must be in [0, 1)"),
    (["fuse", "--hidden", "0"], "--hidden must be at least 1"),
    (["fuse", "--patience", "0"], "--patience must be at least 1"),
    (["fuse", "--seed", str(2 ** 70)], "--seed must be an integer from 0 to"),
    (["fuse", "--head", "bottleneck", "--head-option", "dim=0"], "dim"),
    (["fuse", "--head", "late", "--head-option", "weight=2"], "weight"),
    (["fuse", "--head", "bottleneck"], "extract with --tokens"),
    (["fuse", "--transform", "neg_scalar", "--alpha", "3"], "neg_scalar"),
    (["grid", "--alphas", "3:1:1", "--transforms", "scale"], "empty range"),
    (["grid", "--preset", "paper", "--seeds", "0"], "--seeds must be at least 1"),
    (["grid", "--preset", "paper", "--jobs", "0"], "--jobs must be at least 1"),
    (["grid", "--heads", "late", "--head-option", "late.weight=7"], "weight"),
    (["grid", "--heads", "concat", "--head-option", "bottleneck.dim=8"], "does not train"),
    (["grid", "--preset", "paper", "--epochs", str(2 ** 64)], "--epochs must be an integer from 1 to"),
])
def test_out_of_range_fuse_and_grid_options_leave_no_folder(small_cache, args, message):
    """Every option is checked before a run or grid folder exists: a refusal leaves none behind,
    neither at --out nor under the default run folder."""
    proc = _run([*args, "--cache-dir", "cache", "--out", "out/run"], small_cache.parent)
    assert message in _error_line(proc)
    assert not (small_cache.parent / "out").exists() and not (small_cache.parent / "runs").exists()


# -- evaluate, predict and demo read the settings table like the other commands ---------------

@pytest.mark.parametrize("toml, args, message", [
    ('[evaluate]\nrun = "gone"', ["evaluate"], "alphafuse.toml: run: "),
    ('[predict]\ntop_k = 0', ["predict", "a.mp4", "--run", "run"], "predict.top_k must be at least 1, got 0"),
    ('[predict]\nrun = "run"\ndevice = "tpu"', ["predict", "a.mp4"], "predict.device must be one of cpu, cuda, auto"),
    ('[evaluate]\nwhich = "first"', ["evaluate", "--run", "run"], "evaluate.which must be one of best, last"),
    ('[demo]\nclips_per_class = 2', ["demo"], "demo.clips_per_class must be at least 4, got 2"),
    ("", ["evaluate", "--run", "gone"], "--run: gone does not exist"),
    ("", ["predict", "a.mp4"], "no run: pass --run"),
])
def test_evaluate_predict_demo_take_config_keys(work, toml, args, message):
    (work / "run").mkdir()
    (work / "alphafuse.toml").write_text(toml + "\n")
    proc = _run(args, work)
    assert message in _error_line(proc) and proc.returncode == 2


def test_a_config_key_reaches_evaluate(work):
    """[evaluate] run = ... is the run evaluate opens (its head file is then named)."""
    (work / "elsewhere").mkdir()
    (work / "elsewhere" / "head.pt").write_bytes(b"")
    (work / "alphafuse.toml").write_text('[evaluate]\nrun = "elsewhere"\n')
    assert "elsewhere/head.pt" in _error_line(_run(["evaluate"], work))


def test_head_defaults_are_one_definition():
    from alphafuse.fuse import TrainConfig, head_defaults, head_names
    from alphafuse.settings import SETTINGS

    cfg = TrainConfig()
    for name in ("hidden", "dropout", "head", "epochs", "lr", "modality_dropout", "patience"):
        assert SETTINGS[name].default == getattr(cfg, name), name
    for head in head_names():
        for name in ("hidden", "dropout"):
            if name in head_defaults(head):
                assert head_defaults(head)[name] == getattr(cfg, name), (head, name)
