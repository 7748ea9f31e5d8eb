"""The structure's rules, read from the code's own imports (``ast``, imports under
``if TYPE_CHECKING:`` included: they tie designs together just the same).

- no import circle among the modules of the product packages;
- ``lva_facade`` never imports ``lva_core`` (the facade knows the core through gRPC only);
- ``lva_common`` imports neither process;
- no product package imports the tests, the test kit, the benchmarks or the reliability suite.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("lva_common", "lva_core", "lva_facade")
NEVER_FROM_PRODUCT = ("tests", "lva_testkit", "benchmarks", "reliability", "tools")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, absolute, relative ones resolved."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            found.add(target)
            # "from package import module" imports the module too.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports."""
    paths = {module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    return {
        module: {m for m in imports_of(path, module) if m in paths and m != module}
        for module, path in paths.items()
    }


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def all_imports(package: str) -> dict[str, set[str]]:
    return {
        module_name(path, REPO): imports_of(path, module_name(path, REPO))
        for path in (REPO / package).rglob("*.py")
    }


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in all_imports(package).items()
        for target in targets
        if target.split(".")[0] in forbidden
    )


def test_the_checker_finds_a_circle(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import x\n"
    )
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg import c\n")
    assert circles(graph(tmp_path, ("pkg",))) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_no_import_circle_in_the_product() -> None:
    edges = graph(REPO, PRODUCT)
    assert "lva_core.streams.manager" in edges  # the graph was really read
    assert circles(edges) == []


def test_the_facade_knows_the_core_through_grpc_only() -> None:
    assert offenders("lva_facade", ("lva_core",)) == []


def test_common_code_belongs_to_neither_process() -> None:
    assert offenders("lva_common", ("lva_core", "lva_facade")) == []


def test_product_code_imports_no_test_or_bench_code() -> None:
    for package in PRODUCT:
        assert offenders(package, NEVER_FROM_PRODUCT) == []
