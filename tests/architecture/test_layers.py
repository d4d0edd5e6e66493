"""No import cycles between packages, and algorithms stay below the transport layers."""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "libs" / "tsfl"
ALGORITHMS = {"core", "strategies", "privacy", "robust", "compress", "he", "secagg",
              "identity", "training", "vertical"}
TRANSPORT_AND_UP = {"bus", "storage", "rpc", "runtime", "sdk", "cli", "pipeline"}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _runtime_imports() -> Iterator[tuple[Path, ast.AST, list[str]]]:
    """(file under libs/tsfl, import node, absolute module names it imports) for every
    runtime import (``if TYPE_CHECKING`` blocks are annotations, not dependencies)."""
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "v1":  # generated stubs
            continue
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", 0) in skip:
                continue
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and node.level == 0 else [])
            yield rel, node, names


def package_graph() -> dict[str, dict[str, set[str]]]:
    """package -> imported package -> the modules importing it (runtime imports only)."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for rel, _, names in _runtime_imports():
        src = rel.parts[0].removesuffix(".py")
        for name in names:
            parts = name.split(".")
            if parts[0] == "tsfl" and len(parts) > 1 and parts[1] != src:
                graph[src][parts[1]].add(".".join(rel.with_suffix("").parts))
    return graph


def cycles(graph: dict[str, dict[str, set[str]]]) -> set[tuple[str, str]]:
    """Pairs of packages that reach each other."""
    def reaches(a: str, b: str) -> bool:
        seen, todo = {a}, [a]
        while todo:
            for nxt in graph.get(todo.pop(), {}):
                if nxt == b:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    return {tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a)}


def module_imports() -> set[tuple[str, str]]:
    """(importing module, imported tsfl module) for every runtime import under libs/tsfl
    (as :func:`package_graph` counts them, module by module)."""
    found: set[tuple[str, str]] = set()
    for rel, node, names in _runtime_imports():
        if isinstance(node, ast.ImportFrom) and node.module in ("tsfl", "tsfl.rpc"):
            names = [f"{node.module}.{a.name}" for a in node.names]
        found.update((".".join(rel.with_suffix("").parts), n.removeprefix("tsfl."))
                     for n in names if n.startswith("tsfl."))
    return found


def test_no_package_cycles():
    """No two packages reach each other. (The last known back edges are gone: config's
    cross-domain rules import he from config/compat.py only, and he never imports
    config; rpc takes the runtime's job manager as an argument and owns the party relay;
    the device's gRPC client lives in sdk, so rpc never imports sdk.)"""
    found = cycles(package_graph())
    assert not found, f"import cycles: {sorted(found)}"


def test_only_config_compat_imports_the_algorithm_packages():
    """A spec is checked against he, secagg and compress in one place, lazily."""
    graph = package_graph()["config"]
    users = {mod for dep in ("he", "secagg", "compress") for mod in graph.get(dep, ())}
    assert users <= {"config.compat"}, users


def test_rpc_sits_below_the_runtime_and_the_sdk():
    """rpc serves what the runtime passes in (its job manager, annotated under
    ``TYPE_CHECKING``) and never imports the device SDK, the runtime or the CLI."""
    graph = package_graph()["rpc"]
    bad = {dep: sorted(graph[dep]) for dep in ("runtime", "sdk", "cli") if dep in graph}
    assert not bad, bad


#: what the device SDK may take from rpc: what the gRPC client and server agree on
SDK_FROM_RPC = {"rpc.common", "rpc.retry"}


def test_the_sdk_imports_nothing_server_side():
    """The device SDK (training, privacy, crypto and its gRPC client) imports no stage,
    store, bus, deployment or server module."""
    graph = package_graph()["sdk"]
    bad = {dep: sorted(graph[dep]) for dep in ("pipeline", "storage", "bus", "runtime",
                                               "cli") if dep in graph}
    assert not bad, bad
    from_rpc = {(src, dst) for src, dst in module_imports()
                if src.startswith("sdk.") and dst.split(".")[0] == "rpc"}
    assert {dst for _, dst in from_rpc} <= SDK_FROM_RPC, sorted(from_rpc)


def test_algorithms_never_import_transport_storage_or_deployment():
    graph = package_graph()
    bad = {(pkg, dep, tuple(sorted(mods))) for pkg in ALGORITHMS
           for dep, mods in graph.get(pkg, {}).items() if dep in TRANSPORT_AND_UP}
    assert not bad, bad


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b": {"a.x"}}, "b": {"c": {"b.y"}}, "c": {"a": {"c.z"}}, "d": {"a": set()}}
    assert cycles(graph) == {("a", "b"), ("b", "c"), ("a", "c")}
