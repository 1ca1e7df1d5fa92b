"""No import circles inside `r1_lightning/`, read from the source.

The graph: one node per module (a package is its `__init__.py`), one edge per `import` statement
of another `r1_lightning` module, wherever the statement stands: at module level, inside a
function (an import deferred to call time is still a dependency), or under `if TYPE_CHECKING:`
(a type a module names is still one it depends on). `from package import name` is an edge to
`package.name` where that is a module, else to `package`. Not edges: the parents a submodule's
import runs first (every package that re-exports its submodules would otherwise be a circle with
each of them), and `importlib.import_module` of a name computed at run time (a config's class path).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "r1_lightning"


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of `package` (a package's own name is its
    `__init__.py`)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(path: Path, module: str, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module of `modules`, line) for every import statement anywhere in `path`."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a non-module c: its module
                target = target.rpartition(".")[0]
            if target and target != module:
                found.append((target, node.lineno))
    return found


def import_graph(package: Path) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}."""
    modules = module_files(package)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        for target, line in imported_modules(path, module, modules):
            edges.setdefault(target, line)
    return graph


def import_circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The graph's circles: each strongly connected component of more than one module, sorted
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def describe(circle: list[str], graph: dict[str, dict[str, int]], package: Path) -> str:
    """The imports that tie a circle's modules, one per line: `file:line imports module`."""
    files = module_files(package)
    lines = [f"circle of {len(circle)} modules: {', '.join(circle)}"]
    for module in circle:
        for target, line in sorted(graph[module].items()):
            if target in circle:
                lines.append(f"  {files[module].relative_to(package.parent)}:{line} imports {target}")
    return "\n".join(lines)


def test_r1_lightning_has_no_import_circle():
    graph = import_graph(PACKAGE)
    assert "r1_lightning.rollout.vllm.build" in graph["r1_lightning.rollout.vllm.engine"]  # the source was read
    circles = import_circles(graph)
    assert not circles, "import circles in r1_lightning/:\n" + "\n".join(describe(c, graph, PACKAGE) for c in circles)


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "pkg"


def test_function_local_type_checking_and_relative_imports_are_edges(tmp_path):
    package = write_package(tmp_path, {
        "pkg/__init__.py": "from pkg.a import A\n",
        "pkg/a.py": "A = 1\n\ndef later():\n    from pkg import b\n",
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.c import C\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "import pkg.a\nfrom .. import a\nimport os\n",
    })
    graph = import_graph(package)
    assert graph == {"pkg": {"pkg.a": 1}, "pkg.a": {"pkg.b": 4}, "pkg.b": {"pkg.sub.c": 3},
                     "pkg.sub": {}, "pkg.sub.c": {"pkg.a": 1}}
    assert import_circles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert describe(["pkg.a", "pkg.b", "pkg.sub.c"], graph, package).splitlines() == [
        "circle of 3 modules: pkg.a, pkg.b, pkg.sub.c",
        "  pkg/a.py:4 imports pkg.b", "  pkg/b.py:3 imports pkg.sub.c", "  pkg/sub/c.py:1 imports pkg.a"]


def test_a_package_that_reexports_its_submodules_is_no_circle(tmp_path):
    package = write_package(tmp_path, {
        "pkg/__init__.py": "from pkg.a import A\nfrom pkg.b import B\n",
        "pkg/a.py": "A = 1\n",
        "pkg/b.py": "from pkg.a import A\nB = A\n",
    })
    assert import_circles(import_graph(package)) == []
    # a submodule taking a name from its package's own namespace is a circle: the package imports it
    package = write_package(tmp_path, {"pkg/a.py": "from pkg import B\nA = 1\n"})
    assert import_circles(import_graph(package)) == [["pkg", "pkg.a", "pkg.b"]]
