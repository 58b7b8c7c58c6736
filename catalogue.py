"""What the registries hold, read from the source without importing it.

The command line must list backbones, heads, sampling rules and transforms (choices, ``--help``)
in a fraction of a second, but the registries fill up only when the model files are imported,
which pulls in torch, timm and torchvision (seconds). So this module reads the same source files
with :mod:`ast` and collects what their decorators declare:

* ``@register_backbone("name", modality=..., help=...)`` on a ``load_*(checkpoint=None, **options)``;
* ``@register_head("name", help=...)`` on a head class;
* ``@register_sampling("name", help=...)`` on a sampling rule;
* module-level literals such as ``TRANSFORMS`` and ``TRANSFORM_HELP`` (fuse/transforms.py).

Nothing is defined twice: the decorators stay the one definition, and
tests/test_catalogue.py checks that this reading equals the live registries. A decorator whose
arguments are not literals cannot be read here; that is an error naming the file and line.
"""
from __future__ import annotations

import ast
import functools
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# Where each registry's entries live (relative to the package), scanned in sorted order.
SOURCES = {"backbone": ("extract",), "head": ("fuse/heads",), "sampling": ("data", "extract")}


class CatalogueError(RuntimeError):
    """A registration the static reader cannot understand (a non-literal decorator argument)."""


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str                                  # backbone, head or sampling
    help: str = ""
    modality: str | None = None                # backbones: video, audio, audiovisual (or another declared value)
    options: dict = field(default_factory=dict)  # backbones: keyword defaults of the load function
    source: str = ""                           # file:line, for messages


def _literal(node: ast.AST, where: str):
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise CatalogueError(f"{where}: a registration argument is not a literal "
                             f"({ast.unparse(node)}); the command line reads it without importing") from None


def _defaults(fn: ast.FunctionDef | ast.ClassDef, where: str) -> dict:
    """Keyword defaults of a function (or a class's ``__init__``), as ``inspect.signature`` gives them."""
    if isinstance(fn, ast.ClassDef):
        fn = next((b for b in fn.body if isinstance(b, ast.FunctionDef) and b.name == "__init__"), None)
        if fn is None:
            return {}
    args = fn.args
    positional = args.posonlyargs + args.args
    pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
    return {a.arg: _literal(d, where) for a, d in pairs}


def _entries_in(path: Path, kind: str) -> list[Entry]:
    text = path.read_text(encoding="utf-8")
    decorator_name = f"register_{kind}"
    if decorator_name not in text:
        return []
    rel = path.relative_to(PACKAGE) if path.is_relative_to(PACKAGE) else path
    out = []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        for dec in node.decorator_list:
            if not (isinstance(dec, ast.Call) and getattr(dec.func, "id", getattr(dec.func, "attr", None)) == decorator_name):
                continue
            where = f"{rel}:{dec.lineno}"
            if not dec.args:
                raise CatalogueError(f"{where}: {decorator_name} needs the name as its first argument")
            name = _literal(dec.args[0], where)
            kw = {k.arg: k.value for k in dec.keywords}
            help_text = _literal(kw["help"], where) if "help" in kw else ""
            if not help_text:                    # the registries' rule: else the docstring's first line
                help_text = (ast.get_docstring(node) or "").split("\n")[0]
            entry = Entry(name, kind, help_text, source=where)
            if kind == "backbone":
                options = {k: v for k, v in _defaults(node, where).items() if k != "checkpoint"}
                entry = Entry(name, kind, help_text, _literal(kw["modality"], where), options, where)
            out.append(entry)
    return out


@functools.lru_cache(maxsize=None)
def entries(kind: str) -> dict[str, Entry]:
    """Every ``kind`` (backbone, head, sampling) registered in the package's source, by name."""
    found: dict[str, Entry] = {}
    for folder in SOURCES[kind]:
        for path in sorted((PACKAGE / folder).glob("*.py")):
            for entry in _entries_in(path, kind):
                found[entry.name] = entry
    return dict(sorted(found.items()))


def module_literal(relpath: str, name: str):
    """A module-level literal assignment (``NAME = <literal>``) of a package file."""
    tree = ast.parse((PACKAGE / relpath).read_text(encoding="utf-8"))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(getattr(t, "id", None) == name for t in targets) and node.value is not None:
            return _literal(node.value, f"{relpath}:{node.lineno}")
    raise CatalogueError(f"{relpath} has no module-level literal {name}")


def transforms() -> tuple[str, ...]:
    return tuple(module_literal("fuse/transforms.py", "TRANSFORMS"))


def transform_help() -> dict[str, str]:
    """Each transform's help line, with its default alpha where it has one."""
    defaults = module_literal("fuse/transforms.py", "DEFAULT_ALPHA")
    return {name: text + (f"; default alpha {defaults[name]:g}" if defaults.get(name) is not None else "")
            for name, text in module_literal("fuse/transforms.py", "TRANSFORM_HELP").items()}
