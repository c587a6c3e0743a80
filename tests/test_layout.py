"""The import rules of the layout, read statically from the source (``ast``; nothing is imported).

- The library never reaches into the command lines: no module under ``kpflow/`` imports ``train`` or
  ``eval``, in any form (``import``, ``from ... import``, ``importlib.import_module("...")``,
  ``__import__``), at the top or inside a function.
- Command lines do not import each other: each module of ``eval/`` and ``train/`` is one command
  line, a package there (``eval/bench/``) is one command line whose modules may import each other,
  and the package roots (``eval/__init__.py``, ``train/__init__.py``) are none.
- ``kpflow/forecast`` and ``kpflow/fomm`` do not know each other (``kpflow.pipeline`` joins them).
- No module uses another module's private names: no ``from x import _name`` and no ``x._name``
  where ``x`` is a module of this project (dunder names such as ``__version__`` are public).

Every failure lists ``path:line`` and what to change.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
# The project's Python packages (tests may use private helpers of what they test).
PACKAGES = ("kpflow", "train", "eval", "configs")
CLI_PACKAGES = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class Source:
    path: str  # relative to the repository, for messages
    module: str  # dotted name, e.g. "eval.bench.timing"; a package's __init__ is the package
    is_package: bool
    tree: ast.Module


@dataclasses.dataclass(frozen=True)
class Import:
    line: int
    target: str  # the dotted module imported (or the module a name is imported from)
    names: tuple[str, ...] = ()  # names taken from it by ``from target import ...``


@dataclasses.dataclass(frozen=True)
class Tree:
    """Every module of the project's packages under ``root``."""

    sources: tuple[Source, ...]
    modules: frozenset[str]


@functools.cache
def read_tree(root: pathlib.Path = REPO) -> Tree:
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            out.append(Source(str(path.relative_to(root)), ".".join(parts), is_package,
                              ast.parse(path.read_text(), filename=str(path))))
    return Tree(tuple(out), frozenset(s.module for s in out))


def is_project(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def _absolute(src: Source, level: int, module: str | None) -> str:
    """The absolute module of ``from <level dots><module> import ...`` in ``src``."""
    if not level:
        return module or ""
    package = src.module.split(".") if src.is_package else src.module.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports(src: Source, modules: frozenset[str]) -> list[Import]:
    """Every import in ``src``, wherever it is (module level, functions, conditionals)."""
    out = []
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Import):
            out += [Import(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(src, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # ``from eval import forecast`` imports the module eval.forecast
                    out.append(Import(node.lineno, sub))
                else:
                    out.append(Import(node.lineno, base, (alias.name,)))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                out.append(Import(node.lineno, node.args[0].value))
    return out


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _report(violations: list[str], rule: str) -> str:
    return f"{len(violations)} violation(s) of: {rule}\n  " + "\n  ".join(violations)


def _unique(items) -> list[str]:
    """``from x import a, b`` is one line to change: one entry."""
    return list(dict.fromkeys(items))


# -- the rules --------------------------------------------------------------------------------------


def library_importing_command_lines(tree: Tree) -> list[str]:
    return _unique(
        f"{s.path}:{imp.line}: imports {imp.target}"
        for s in tree.sources if _within(s.module, "kpflow")
        for imp in imports(s, tree.modules) if any(_within(imp.target, cli) for cli in CLI_PACKAGES)
    )


def _cli_of(module: str) -> str | None:
    """The command line ``module`` belongs to: ``eval.bench.timing`` -> ``eval.bench``; None for a
    package root (``eval``) or a module outside ``eval/`` and ``train/``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] in CLI_PACKAGES and len(parts) > 1 else None


def command_lines_importing_command_lines(tree: Tree) -> list[str]:
    violations = []
    for s in tree.sources:
        own = _cli_of(s.module)
        if own is None:
            continue
        for imp in imports(s, tree.modules):
            other = _cli_of(imp.target)
            if other is not None and other != own:
                violations.append(f"{s.path}:{imp.line}: {own} imports {imp.target}")
    return _unique(violations)


def forecast_and_fomm_imports(tree: Tree) -> list[str]:
    pairs = (("kpflow.forecast", "kpflow.fomm"), ("kpflow.fomm", "kpflow.forecast"))
    return _unique(
        f"{s.path}:{imp.line}: imports {imp.target}"
        for a, b in pairs
        for s in tree.sources if _within(s.module, a)
        for imp in imports(s, tree.modules) if _within(imp.target, b)
    )


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_names(src: Source, modules: frozenset[str]) -> dict[str, str]:
    """Local names bound to project modules by imports anywhere in ``src``: ``{name: module}``."""
    bound = {}
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:  # ``import a.b`` binds ``a``
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(src, node.level, node.module)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    return {name: module for name, module in bound.items() if is_project(module)}


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None for anything that is not a chain of names."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else head + [node.attr]
    return None


def private_names_used_across_modules(tree: Tree) -> list[str]:
    violations = []
    for s in tree.sources:
        for imp in imports(s, tree.modules):
            for name in imp.names:
                if _private(name) and is_project(imp.target) and imp.target != s.module:
                    violations.append(f"{s.path}:{imp.line}: from {imp.target} import {name}")
        modules = _module_names(s, tree.modules)
        for node in ast.walk(s.tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            chain = _dotted(node.value)
            if not chain or chain[0] not in modules:
                continue  # self._x, obj._x: attributes of objects, not of modules
            owner = ".".join([modules[chain[0]]] + chain[1:])
            if owner in tree.modules and owner != s.module:
                violations.append(f"{s.path}:{node.lineno}: {'.'.join(chain)}.{node.attr} (private to {owner})")
    return _unique(violations)


# -- the checks, on this repository ------------------------------------------------------------------


def test_the_library_imports_no_command_line():
    found = library_importing_command_lines(read_tree())
    assert not found, _report(found, "nothing under kpflow/ imports train or eval (move what both need into kpflow/)")


def test_command_lines_import_no_other_command_line():
    found = command_lines_importing_command_lines(read_tree())
    assert not found, _report(found, "no command line in eval/ or train/ imports another (move what both need "
                                     "into kpflow/)")


def test_forecasting_and_fomm_do_not_know_each_other():
    found = forecast_and_fomm_imports(read_tree())
    assert not found, _report(found, "kpflow/forecast and kpflow/fomm never import each other (kpflow.pipeline "
                                     "joins them)")


def test_no_module_uses_another_modules_private_names():
    found = private_names_used_across_modules(read_tree())
    assert not found, _report(found, "no module uses another module's private (_name) functions or values "
                                     "(make the name public, or move it)")


# -- the checks catch what they are for -----------------------------------------------------------------

PLANTED = {
    "kpflow/__init__.py": "",
    "kpflow/ok.py": "import numpy as np\nfrom kpflow.forecast import base\n\ndef f(x):\n    return base.g(x)._cache\n",
    "kpflow/lazy.py": "import importlib\n\ndef f():\n    return importlib.import_module('eval.forecast')\n",
    "kpflow/direct.py": "from train import forecaster\n",
    "kpflow/forecast/__init__.py": "",
    "kpflow/forecast/base.py": "def g(x):\n    import kpflow.fomm.model\n    return x\n\ndef _h():\n    pass\n",
    "kpflow/forecast/gru.py": "from .base import _h\nfrom . import base\n\nbase._h()\n",
    "kpflow/fomm/__init__.py": "",
    "kpflow/fomm/model.py": "from kpflow import forecast\nimport kpflow.forecast.base as fb\n\nfb.__name__\nfb._h\n",
    "eval/__init__.py": "",
    "eval/forecast.py": "import kpflow.forecast.base\n\nkpflow.forecast.base._h()\n",
    "eval/video.py": "def main():\n    from eval import forecast\n",
    "eval/bench/__init__.py": "from eval.bench import timing\n",
    "eval/bench/timing.py": "from . import _stats\nfrom ..bench import __init__\n",
    "eval/bench/_stats.py": "",
    "train/__init__.py": "from train import forecaster\n",
    "train/forecaster.py": "from eval.bench import timing\n",
    "configs/__init__.py": "",
}


def test_the_checks_find_planted_violations(tmp_path):
    for name, text in PLANTED.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    tree = read_tree(tmp_path)
    assert sorted(library_importing_command_lines(tree)) == [
        "kpflow/direct.py:1: imports train.forecaster",
        "kpflow/lazy.py:4: imports eval.forecast",
    ]
    # eval.bench's modules import each other freely; the package roots are no command lines.
    assert sorted(command_lines_importing_command_lines(tree)) == [
        "eval/video.py:2: eval.video imports eval.forecast",
        "train/forecaster.py:1: train.forecaster imports eval.bench.timing",
    ]
    assert sorted(forecast_and_fomm_imports(tree)) == [
        "kpflow/fomm/model.py:1: imports kpflow.forecast",
        "kpflow/fomm/model.py:2: imports kpflow.forecast.base",
        "kpflow/forecast/base.py:2: imports kpflow.fomm.model",
    ]
    # Not flagged: base._cache on a value (not a module), fb.__name__ (dunder), a private module.
    assert sorted(private_names_used_across_modules(tree)) == [
        "eval/forecast.py:3: kpflow.forecast.base._h (private to kpflow.forecast.base)",
        "kpflow/fomm/model.py:5: fb._h (private to kpflow.forecast.base)",
        "kpflow/forecast/gru.py:1: from kpflow.forecast.base import _h",
        "kpflow/forecast/gru.py:4: base._h (private to kpflow.forecast.base)",
    ]
