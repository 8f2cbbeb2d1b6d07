"""No module of distillscope imports another at module level in a cycle (imports inside functions are lazy and allowed)."""
from __future__ import annotations

import ast
from pathlib import Path

import distillscope

ROOT = Path(distillscope.__file__).parent


def _modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Each module's dotted name -> (file, whether it is a package's ``__init__``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        init = parts[-1] == "__init__"
        modules[".".join((package, *(parts[:-1] if init else parts)))] = (path, init)
    return modules


def _top_level(tree: ast.AST):
    """The import statements run when the module is imported: everywhere but inside functions."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _top_level(node)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` (its source under ``root``) it imports at module level."""
    modules = _modules(root, package)
    graph = {}
    for name, (path, init) in modules.items():
        here = name if init else name.rpartition(".")[0]  # the package a relative import starts from
        targets = set()
        for node in _top_level(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
                continue
            base = here
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = ".".join(p for p in (base if node.level else "", node.module or "") if p)
            targets.add(source)
            targets |= {f"{source}.{alias.name}" for alias in node.names}  # ``from pkg import module``
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when it is acyclic."""
    done, path = set(), []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target in path:
                return path[path.index(target):] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_distillscope_has_no_import_cycle():
    graph = import_graph(ROOT, "distillscope")
    assert "distillscope.engine.trainer" in graph and "distillscope.engine.teachers" in graph["distillscope.engine.trainer"]
    cycle = find_cycle(graph)
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_an_injected_cycle_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from .a import A\n",
        "a.py": "import os\nfrom .sub.b import B\nA = 1\n",
        "sub/__init__.py": "",
        "sub/b.py": "def late():\n    from ..a import A\n\nB = 2\n",
        "sub/c.py": "from .. import a\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg, "pkg")
    assert graph["pkg"] == {"pkg.a"} and graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.c"] == {"pkg", "pkg.a"}
    assert find_cycle(graph) is None  # b imports a only inside a function

    (pkg / "sub/b.py").write_text("from ..a import A\n\nB = 2\n")
    graph = import_graph(pkg, "pkg")
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub/b.py").write_text("try:\n    import pkg.sub.c\nexcept ImportError:\n    pass\n")
    assert find_cycle(import_graph(pkg, "pkg")) == ["pkg", "pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg"]
