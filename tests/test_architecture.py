"""The architecture of DESIGN §2, checked by parsing the source (nothing is imported).

Dependencies point one way, ``physics`` ← ``guidance`` ← ``diffusion`` ← ``restoration``
← ``cli`` / ``napari``; the core (everything but ``pkl_dg.napari`` and ``pkl_dg.cli``)
imports neither a GUI toolkit nor the interfaces; module-level imports inside ``pkl_dg``
form no cycle; modules stay small; a broad ``except`` re-raises or tells the user.

The tables below are the architecture. A known exception names one (module, import),
module, or (module, function) that breaks a rule today, why, and what would fix it; the
test fails for any new offender, and for a known exception that no longer applies (then
delete its line). docs/architecture.md explains the layers.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "pkl_dg"

# ---------------------------------------------------------------------- the rules
#: what takes arrays, tensors and numbers: never the settings schema, nor the PSF object
#: built from it (issue 17 step 2)
SETTINGS = ("pkl_dg.settings", "pkl_dg.psf_source")
#: layer → packages it must not import, at module or function level (DESIGN §2:
#: physics ← guidance ← diffusion ← restoration ← cli / napari)
LAYER_RULES: dict[str, tuple[str, ...]] = {
    "pkl_dg.physics": ("pkl_dg.guidance", "pkl_dg.diffusion", "pkl_dg.restoration",
                       "pkl_dg.cli", "pkl_dg.napari") + SETTINGS,
    "pkl_dg.guidance": ("pkl_dg.diffusion", "pkl_dg.restoration", "pkl_dg.cli",
                        "pkl_dg.napari") + SETTINGS,
    "pkl_dg.diffusion": ("pkl_dg.restoration", "pkl_dg.cli", "pkl_dg.napari") + SETTINGS,
}
#: the user interfaces; every other module of the package is core
INTERFACES = ("pkl_dg.napari", "pkl_dg.cli")
#: what the core never imports (GUI toolkits, and the interfaces above it)
GUI_IMPORTS = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6",
               "superqt", "vispy") + INTERFACES
#: the CLI imports these only inside a subcommand's function (``pkl-dg restore`` loads no Qt)
CLI_LAZY_IMPORTS = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6",
                    "superqt", "vispy", "pkl_dg.napari")
MAX_LINES = 400
#: a broad ``except`` must raise, or call something whose name has one of these words
REPORT_WORDS = ("warn", "show", "report", "error", "log", "print")

# ---------------------------------------------------------------------- known exceptions
#: (importer, imported) → why it is allowed for now / what would fix it
KNOWN_LAYER_EXCEPTIONS: dict[tuple[str, str], str] = {}
KNOWN_GUI_IMPORTS: dict[tuple[str, str], str] = {}
#: module → why it is over MAX_LINES / what would fix it
KNOWN_LONG_MODULES: dict[str, str] = {
}
#: (module, function) → why its broad except is silent / what would fix it
KNOWN_SILENT_EXCEPTS: dict[tuple[str, str], str] = {}


# ---------------------------------------------------------------------- parsing
@dataclass
class Import:
    """One imported module name, where it is imported and how."""

    target: str             #: dotted module name (``pkl_dg.physics.psf``, ``napari.layers``)
    line: int
    module_level: bool      #: runs when the importer is imported
    type_checking: bool     #: inside ``if TYPE_CHECKING:`` (never runs)


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    lines: int
    imports: list[Import] = field(default_factory=list)


def discover(src: Path, package: str = PACKAGE) -> dict[str, Module]:
    """Parse every ``.py`` file of ``package`` under ``src`` and resolve its imports.

    Parameters
    ----------
    src : Path
        The folder holding the package (``src``).
    package : str
        Import name of the package.

    Returns
    -------
    dict of str to Module
        Dotted module name → parsed module, imports resolved to module names: ``from a
        import b`` is ``a.b`` when that is a module of the package, else ``a``; a name a
        package serves lazily from its ``__getattr__`` resolves to the module it imports.
    """
    modules: dict[str, Module] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        text = path.read_text(encoding="utf-8")
        modules[".".join(parts)] = Module(".".join(parts), path, is_package,
                                          ast.parse(text, str(path)), len(text.splitlines()))
    lazy = {name: _lazy_exports(mod, modules) for name, mod in modules.items()
            if mod.is_package}
    for mod in modules.values():
        mod.imports = list(_imports(mod, modules, lazy))
    return modules


def _absolute(mod: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.name.split(".")
    if not mod.is_package:
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(mod: Module, node: ast.stmt, modules: dict[str, Module],
             lazy: dict[str, dict[str, set[str]]]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    prefix = _absolute(mod, node)
    out = []
    for alias in node.names:
        sub = f"{prefix}.{alias.name}"
        if sub in modules:
            out.append(sub)
        elif alias.name in lazy.get(prefix, {}):
            out.extend(sorted(lazy[prefix][alias.name]))
        else:
            out.append(prefix)
    return out


def _lazy_exports(pkg: Module, modules: dict[str, Module]) -> dict[str, set[str]]:
    """Names a package's ``__getattr__`` serves → the modules it imports to serve them."""
    out: dict[str, set[str]] = {}
    for fn in pkg.tree.body:
        if not (isinstance(fn, ast.FunctionDef) and fn.name == "__getattr__"):
            continue
        names = {c.value for n in ast.walk(fn) if isinstance(n, ast.Compare)
                 for comp in n.comparators for c in ast.walk(comp)
                 if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        imported = {t for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))
                    for t in _targets(pkg, n, modules, {})}
        for name in names:
            out.setdefault(name, set()).update(imported)
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(mod: Module, modules: dict[str, Module], lazy: dict[str, dict[str, set[str]]]):
    def visit(node: ast.AST, module_level: bool, type_checking: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(mod, child, modules, lazy):
                    yield Import(target, child.lineno, module_level, type_checking)
            inner = module_level and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            tc = type_checking or (isinstance(child, ast.If) and _is_type_checking(child))
            yield from visit(child, inner, tc)

    yield from visit(mod.tree, True, False)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# ---------------------------------------------------------------------- checks
def layer_violations(modules: dict[str, Module]) -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every import from a lower layer to a higher one."""
    out = []
    for mod in modules.values():
        for layer, forbidden in LAYER_RULES.items():
            if _under(mod.name, (layer,)):
                out += [(mod.name, imp.target, imp.line) for imp in mod.imports
                        if _under(imp.target, forbidden)]
    return out


def gui_violations(modules: dict[str, Module]) -> list[tuple[str, str, int]]:
    """(importer, imported, line): core modules importing a GUI toolkit or an interface,
    and CLI modules importing one at module level."""
    out = []
    for mod in modules.values():
        if not _under(mod.name, INTERFACES):
            out += [(mod.name, i.target, i.line) for i in mod.imports
                    if _under(i.target, GUI_IMPORTS)]
        elif _under(mod.name, ("pkl_dg.cli",)):
            out += [(mod.name, i.target, i.line) for i in mod.imports
                    if i.module_level and not i.type_checking
                    and _under(i.target, CLI_LAZY_IMPORTS)]
    return out


def import_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Cycles among the package's module-level imports, each as a path ``[a, b, …, a]``.

    An import inside a function or under ``if TYPE_CHECKING:`` does not run when the
    module is imported, so it is not an edge. One cycle is reported per strongly connected
    component (Tarjan), the shortest one through its first module.
    """
    graph: dict[str, set[str]] = defaultdict(set)
    for mod in modules.values():
        for imp in mod.imports:
            if (imp.module_level and not imp.type_checking and imp.target in modules
                    and imp.target != mod.name):
                graph[mod.name].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(modules):
        if v not in index:
            strongconnect(v)
    return [_shortest_cycle(graph, comp) for comp in components]


def _shortest_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    start, members = comp[0], set(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return comp  # unreachable for a strongly connected component


def long_modules(modules: dict[str, Module]) -> dict[str, int]:
    """Module → line count, for modules over MAX_LINES."""
    return {m.name: m.lines for m in modules.values() if m.lines > MAX_LINES}


def _call_name(call: ast.Call) -> str:
    parts, f = [], call.func
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def _reports(call: ast.Call) -> bool:
    """Whether a call reports to the user, judged by its name (``show_error``,
    ``warnings.warn``, ``logger.exception``, ``print``, ``self.report``…); a math
    ``log`` (``np.log``, ``torch.log``, ``math.log``) is not a report."""
    name = _call_name(call)
    words = [w.lower() for part in name.split(".")
             for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", part)]
    if name.split(".")[0] in ("np", "numpy", "torch", "math") and words[-1:] == ["log"]:
        return False
    return any(w.startswith(r) for w in words for r in REPORT_WORDS)


def _is_broad(handler: ast.ExceptHandler) -> bool:
    t = handler.type
    if t is None:
        return True
    names = t.elts if isinstance(t, ast.Tuple) else [t]
    return any((isinstance(n, ast.Name) and n.id in ("Exception", "BaseException"))
               or (isinstance(n, ast.Attribute) and n.attr in ("Exception", "BaseException"))
               for n in names)


def silent_broad_excepts(modules: dict[str, Module]) -> list[tuple[str, str, int]]:
    """(module, enclosing function, line) of every ``except Exception`` / ``except
    BaseException`` / bare ``except:`` whose body neither raises nor reports."""
    out = []

    def visit(mod: Module, node: ast.AST, scope: str):
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = f"{scope}.{child.name}" if scope else child.name
            if isinstance(child, ast.ExceptHandler) and _is_broad(child):
                body = [n for stmt in child.body for n in ast.walk(stmt)]
                if not any(isinstance(n, ast.Raise) or (isinstance(n, ast.Call) and _reports(n))
                           for n in body):
                    out.append((mod.name, scope or "<module>", child.lineno))
            visit(mod, child, inner)

    for mod in modules.values():
        visit(mod, mod.tree, "")
    return out


# ---------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    found = discover(SRC)
    assert "pkl_dg.physics.convolution" in found and "pkl_dg.napari.widget" in found
    return found


def _fmt(rows) -> str:
    return "\n".join("  " + " ".join(map(str, r)) for r in rows)


def test_layers_import_only_downwards(modules):
    bad = [v for v in layer_violations(modules) if v[:2] not in KNOWN_LAYER_EXCEPTIONS]
    assert not bad, ("imports from a lower layer to a higher one (DESIGN §2; move the code "
                     "down a layer or pass it in as an argument):\n" + _fmt(bad))


def test_core_imports_no_gui_and_the_cli_loads_it_lazily(modules):
    bad = [v for v in gui_violations(modules) if v[:2] not in KNOWN_GUI_IMPORTS]
    assert not bad, ("GUI imports in the core, or at module level in pkl_dg.cli (import "
                     "them inside the subcommand's function):\n" + _fmt(bad))


def test_no_import_cycles(modules):
    cycles = import_cycles(modules)
    assert not cycles, "module-level import cycles:\n" + "\n".join(
        "  " + " → ".join(c) for c in cycles)


def test_modules_stay_small(modules):
    bad = {m: n for m, n in long_modules(modules).items() if m not in KNOWN_LONG_MODULES}
    assert not bad, (f"modules over {MAX_LINES} lines (split them by responsibility):\n"
                     + _fmt(sorted(bad.items())))


def test_broad_excepts_raise_or_report(modules):
    bad = [v for v in silent_broad_excepts(modules) if v[:2] not in KNOWN_SILENT_EXCEPTS]
    assert not bad, ("broad excepts that neither re-raise nor tell the user (catch the "
                     "exceptions that can occur and report them):\n" + _fmt(bad))


def test_known_exceptions_still_apply(modules):
    """A fixed exception must leave its table, so the rule covers that module again."""
    stale = [k for k in KNOWN_LAYER_EXCEPTIONS
             if k not in {v[:2] for v in layer_violations(modules)}]
    stale += [k for k in KNOWN_GUI_IMPORTS if k not in {v[:2] for v in gui_violations(modules)}]
    stale += [k for k in KNOWN_LONG_MODULES if k not in long_modules(modules)]
    stale += [k for k in KNOWN_SILENT_EXCEPTS
              if k not in {v[:2] for v in silent_broad_excepts(modules)}]
    assert not stale, "known exceptions that no longer occur (delete them):\n" + _fmt(stale)


# ---------------------------------------------------------------------- the checks catch
def _write_package(root: Path, files: dict[str, str]) -> dict[str, Module]:
    for rel, text in files.items():
        path = root / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return discover(root)


def test_checks_find_each_kind_of_violation(tmp_path):
    """Each check flags a planted violation and passes the allowed form beside it."""
    mods = _write_package(tmp_path, {
        "__init__.py": ("def __getattr__(name):\n"
                        "    if name in ('restore',):\n"
                        "        from pkl_dg import restoration\n"
                        "        return restoration.restore\n"),
        "restoration.py": "from pkl_dg.physics import psf\n",
        "physics/__init__.py": "",
        "physics/psf.py": ("import numpy\n"
                           "def f():\n"
                           "    from pkl_dg.diffusion import sampler\n"   # function level
                           "    from pkl_dg import restore\n"             # lazy export
                           "    try:\n        pass\n"
                           "    except Exception:\n        pass\n"        # silent
                           "    try:\n        pass\n"
                           "    except Exception as exc:\n"
                           "        warnings.warn(str(exc))\n"            # reported: fine
                           "    try:\n        pass\n"
                           "    except:\n        x = np.log(2)\n"         # math log: silent
                           "    try:\n        pass\n"
                           "    except ValueError:\n        pass\n"),     # narrow: fine
        "diffusion/__init__.py": "",
        "diffusion/sampler.py": ("from pkl_dg.guidance import steps\n"
                                 "from typing import TYPE_CHECKING\n"
                                 "if TYPE_CHECKING:\n"
                                 "    from pkl_dg.guidance import cycle_b\n"),
        "guidance/__init__.py": "",
        "guidance/steps.py": "from .cycle_b import x\n",                # relative import
        "guidance/cycle_b.py": "from pkl_dg.diffusion import sampler\nimport qtpy\n",
        "cli/__init__.py": "import napari\ndef main():\n    from pkl_dg.napari import widget\n",
        "napari/__init__.py": "",
        "napari/widget.py": "import qtpy\n" + "x = 1\n" * MAX_LINES,
    })
    assert set(layer_violations(mods)) == {
        ("pkl_dg.physics.psf", "pkl_dg.diffusion.sampler", 3),
        ("pkl_dg.physics.psf", "pkl_dg.restoration", 4),
        ("pkl_dg.guidance.cycle_b", "pkl_dg.diffusion.sampler", 1)}
    assert set(gui_violations(mods)) == {("pkl_dg.guidance.cycle_b", "qtpy", 2),
                                         ("pkl_dg.cli", "napari", 1)}
    assert import_cycles(mods) == [["pkl_dg.diffusion.sampler", "pkl_dg.guidance.steps",
                                    "pkl_dg.guidance.cycle_b", "pkl_dg.diffusion.sampler"]]
    assert long_modules(mods) == {"pkl_dg.napari.widget": MAX_LINES + 1}
    assert [(m, f) for m, f, _ in silent_broad_excepts(mods)] == [
        ("pkl_dg.physics.psf", "f"), ("pkl_dg.physics.psf", "f")]


def test_a_cycle_through_function_level_imports_is_no_cycle(tmp_path):
    mods = _write_package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkl_dg import b\n",
        "b.py": "def f():\n    from pkl_dg import a\n",
    })
    assert import_cycles(mods) == []
