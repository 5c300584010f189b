"""The package's layout: imports run down the floors below and never in a circle (README "Code layout").

Every import counts, those inside functions included (they are how heavy libraries stay out of
`bonrl --help`, and a lazy import upward is still an upward dependency), and so does every
"bon_vs_rl.module:function" string that `cli.run_stage` and `experiment` import by name.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import bon_vs_rl

PACKAGE = Path(bon_vs_rl.__file__).resolve().parent

# Lowest first: a module may import its own floor and the floors before it, never one after it.
FLOORS = [
    ("errors", ["bon_vs_rl", "bon_vs_rl.errors"]),  # `bon_vs_rl` itself: the version, nothing else
    ("record", ["bon_vs_rl.record"]),
    ("config", ["bon_vs_rl.config"]),
    ("analysis", ["bon_vs_rl.analysis"]),
    ("measurement", ["bon_vs_rl.measurement"]),
    ("methods", ["bon_vs_rl.methods", "bon_vs_rl.monitor"]),  # monitor: methods' floor (a user-facing callback)
    ("report", ["bon_vs_rl.report"]),
    ("commands", ["bon_vs_rl.cli", "bon_vs_rl.experiment"]),
]
RUNNER = re.compile(r"^(\w+(?:\.\w+)+):(\w+)$")  # "bon_vs_rl.methods.ppo:train"


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a folder's __init__ is the folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(path: Path, name: str, known: dict[str, Path], package: str) -> set[str]:
    """The package's modules that module `name` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    found = set()

    def add(target: str, names: list[str]) -> None:
        hit = False
        for n in names:  # `from pkg import module` imports the module
            if f"{target}.{n}" in known:
                found.add(f"{target}.{n}")
                hit = True
        if not hit and target in known:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == package or a.name.startswith(package + "."):
                    add(a.name, [])
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == package or target.startswith(package + "."):
                add(target, [a.name for a in node.names])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = RUNNER.match(node.value)
            if match and match.group(1).split(".")[0] == package:
                add(match.group(1), [])
    found.discard(name)
    return found


def graph(root: Path = PACKAGE, package: str = "bon_vs_rl") -> dict[str, set[str]]:
    known = modules(root, package)
    return {name: imports(path, name, known, package) for name, path in known.items()}


def floor(module: str, floors=FLOORS) -> int | None:
    """The floor of a module: its longest matching prefix (`bon_vs_rl` itself matches only exactly)."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(floors):
        for prefix in prefixes:
            exact_only = "." not in prefix
            if (module == prefix or (not exact_only and module.startswith(prefix + "."))) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def upward(edges: dict[str, set[str]], floors=FLOORS) -> list[str]:
    names = [f for f, _ in floors]
    return sorted(f"{a} ({names[floor(a, floors)]}) imports {b} ({names[floor(b, floors)]})"
                  for a, targets in edges.items() for b in targets if floor(b, floors) > floor(a, floors))


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def test_every_module_has_a_floor():
    """A new folder or top-level module must be placed in FLOORS (and in the README's layout) first."""
    unplaced = [m for m in graph() if floor(m) is None]
    assert unplaced == []


def test_imports_run_only_downward_between_floors():
    assert upward(graph()) == []


def test_no_module_imports_itself_back_in_a_circle():
    assert circles(graph()) == []


def test_every_runner_string_names_a_function_that_exists():
    """cli.run_stage and experiment import "module:function" by name: a moved module must not break them."""
    runners = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and RUNNER.match(node.value) \
                    and node.value.startswith("bon_vs_rl."):
                runners.add(node.value)
    assert len(runners) >= 9  # train-rm, sample, ppo, rl, lab, dpo, distill, report, experiment
    missing = [r for r in sorted(runners)
               if not callable(getattr(importlib.import_module(r.split(":")[0]), r.split(":")[1], None))]
    assert missing == []


def test_each_role_folder_says_what_lives_there_and_imports_nothing():
    """Each folder's __init__.py is a docstring only: importing a folder costs nothing, and re-exports
    (old import paths kept as aliases) would hide where a name lives."""
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), init
        assert [type(n).__name__ for n in tree.body] == ["Expr"], init


def test_the_checks_catch_a_planted_upward_import_and_circle(tmp_path):
    """The walker on a small package with one upward import inside a function, one via a runner string,
    and one circle through a relative import: each is reported."""
    root = tmp_path / "pkg"
    for folder in ("low", "high"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text('"""Folder."""\n')
    (root / "__init__.py").write_text("")
    (root / "low" / "a.py").write_text("def f():\n    from pkg.high import b\n")
    (root / "low" / "c.py").write_text('RUN = "pkg.high.b:go"\nfrom . import d\n')
    (root / "low" / "d.py").write_text("import pkg.low.c\n")
    (root / "high" / "b.py").write_text("from pkg.low import a\ndef go():\n    pass\n")
    floors = [("low", ["pkg", "pkg.low"]), ("high", ["pkg.high"])]
    edges = graph(root, "pkg")
    assert upward(edges, floors) == ["pkg.low.a (low) imports pkg.high.b (high)",
                                     "pkg.low.c (low) imports pkg.high.b (high)"]
    assert circles(edges) == [["pkg.high.b", "pkg.low.a"], ["pkg.low.c", "pkg.low.d"]]
