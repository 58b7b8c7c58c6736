"""The console entry point run in the test process: the imports are paid once, not per command."""
import contextlib
import io
import sys


def run_cli(*args, traceback_ok: bool = False) -> tuple[int, str, str]:
    """``alphafuse ARGS`` through ``alphafuse.cli.run``: (exit code, stdout, stderr). A traceback on
    stderr fails the calling test unless ``traceback_ok``: users get one-line errors."""
    import alphafuse.cli as cli

    old, sys.argv = sys.argv, ["alphafuse", *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.run()
                code = 0
            except SystemExit as exc:
                code = exc.code
    finally:
        sys.argv = old
    assert traceback_ok or "Traceback" not in err.getvalue(), err.getvalue()
    return code, out.getvalue(), err.getvalue()
