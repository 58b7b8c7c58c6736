"""Every bad input a user can type ends in one line naming the flag, key or file: never a traceback.

The commands run in this process through the console entry point (cli.run), which is what a
user's shell calls; one test runs a real process, for Ctrl-C.
"""
import contextlib
import io
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.paths import REPO


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
    import alphafuse.cli as cli

    old_argv = sys.argv
    sys.argv = ["alphafuse", *args]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.run()
                code = 0
            except SystemExit as exc:
                code = exc.code
    finally:
        sys.argv = old_argv
    assert "Traceback" not in err.getvalue(), err.getvalue()
    return Result(code, err.getvalue())


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


def test_ctrl_c_exits_130_without_a_traceback(work):
    # A base-size extraction on CPU: interrupted while it loads or runs the models.
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "extract", "--manifest", "m.csv",
                             "--cache-dir", "c", "--arch", "base", "--workers", "0"], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(6)
    os.killpg(proc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
