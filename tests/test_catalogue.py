"""catalogue.py: the command line's static reading of the registries equals the live registries,
and building any command's --help imports no torch."""
import inspect
import subprocess
import sys
import textwrap

import pytest

from alphafuse import catalogue
from alphafuse.catalogue import CatalogueError


def test_backbones_read_from_source_equal_the_live_registry():
    from alphafuse.extract import registry  # imports every family, which fills the registry

    # Tests may register backbones of their own (defined outside the package): those are not in its source.
    live = {name: registry.get_backbone(name) for name in registry.backbone_names()
            if registry.get_backbone(name).build.__module__.startswith("alphafuse.")}
    static = catalogue.entries("backbone")
    assert set(static) == set(live)
    for name, entry in static.items():
        assert (entry.modality, entry.help, entry.options) == (live[name].modality, live[name].help,
                                                               live[name].options), name


def test_heads_samplings_and_transforms_equal_the_live_ones():
    from alphafuse.data.sampling import SAMPLINGS
    from alphafuse.fuse.heads import get_head, head_names
    from alphafuse.fuse.transforms import DEFAULT_ALPHA, TRANSFORM_HELP, TRANSFORMS

    heads = catalogue.entries("head")
    assert list(heads) == [n for n in head_names() if get_head(n).cls.__module__.startswith("alphafuse.")]
    assert all(heads[name].help == get_head(name).help for name in heads)
    samplings = catalogue.entries("sampling")
    assert set(samplings) == {n for n, rule in SAMPLINGS.items() if rule.fn.__module__.startswith("alphafuse.")}
    assert all(samplings[name].help == SAMPLINGS[name].help for name in samplings)
    assert catalogue.transforms() == TRANSFORMS
    for name, text in catalogue.transform_help().items():
        assert text.startswith(TRANSFORM_HELP[name])
        if DEFAULT_ALPHA[name] is None:
            assert "default alpha" not in text
        else:
            assert text.endswith(f"default alpha {DEFAULT_ALPHA[name]:g}")


def test_a_registration_that_is_not_a_literal_is_an_error_naming_the_line(tmp_path):
    source = tmp_path / "family.py"
    source.write_text(textwrap.dedent("""
        NAME = "computed"
        @register_backbone(NAME, modality="video")
        def load_x(checkpoint=None, size: int = 3):
            pass
    """))
    with pytest.raises(CatalogueError, match=r"family\.py:3: .*not a literal \(NAME\)"):
        catalogue._entries_in(source, "backbone")
    source.write_text(textwrap.dedent("""
        @register_backbone("x", modality="video")
        def load_x(checkpoint=None, size: int = 3, *, depth=2 ** 2):
            '''One line of help.'''
    """))
    with pytest.raises(CatalogueError, match=r"not a literal \(2 \*\* 2\)"):
        catalogue._entries_in(source, "backbone")


def test_keyword_defaults_are_read_as_inspect_reads_them(tmp_path):
    source = tmp_path / "family.py"
    code = textwrap.dedent("""
        def load_x(checkpoint=None, a=1, b: str = "s", *, c=(1, 2), d=None, e):
            '''Help from the docstring.

            More.'''
    """)
    source.write_text("@register_backbone('x', modality='audio')" + code)
    namespace = {}
    exec(code, namespace)
    expected = {k: p.default for k, p in inspect.signature(namespace["load_x"]).parameters.items()
                if k != "checkpoint" and p.default is not inspect.Parameter.empty}
    (entry,) = catalogue._entries_in(source, "backbone")
    assert entry.options == expected and entry.help == "Help from the docstring."


def test_no_help_imports_torch():
    # One fresh interpreter renders every command's --help, then reports what it imported.
    commands = [[], ["extract"], ["fuse"], ["grid"], ["evaluate"], ["predict"], ["demo"], ["cache"],
                ["cache", "info"], ["cache", "merge"]]
    script = textwrap.dedent(f"""
        import sys
        from alphafuse.cli import main
        for argv in {commands!r}:
            try:
                main([*argv, "--help"], standalone_mode=False)
            except SystemExit:
                pass
        heavy = sorted(m for m in ("torch", "timm", "torchvision", "h5py", "sklearn", "scipy", "transformers")
                       if m in sys.modules)
        print("HEAVY", ",".join(heavy))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "Backbones" in out and "Transforms" in out     # the registries' epilogs were rendered
    assert out.strip().splitlines()[-1] == "HEAVY", out.strip().splitlines()[-1]


def test_stage_two_commands_do_not_import_the_backbones(tmp_path):
    # fuse and grid read caches: they pay for torch, never for timm, torchvision or transformers
    # (the device check once imported extract/ and cost every fuse some 3 s).
    script = textwrap.dedent(f"""
        import sys
        from alphafuse.cli import main
        for argv in (["fuse", "--device", "cpu", "--out", {str(tmp_path / "run")!r}],
                     ["grid", "--preset", "paper", "--out", {str(tmp_path / "grid")!r}]):
            try:
                main([*argv, "--cache-dir", {str(tmp_path)!r}], standalone_mode=False)
            except BaseException as exc:
                print("ERROR", type(exc).__name__, exc)
        print("HEAVY", ",".join(sorted(m for m in ("torch", "timm", "torchvision", "transformers", "alphafuse.extract")
                                       if m in sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert sum(line.startswith("ERROR CacheError") for line in lines) == 2, out   # both ran: no cache here
    assert lines[-1] == "HEAVY torch", lines[-1]
