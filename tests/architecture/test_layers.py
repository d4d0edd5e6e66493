"""No import cycles between packages, and algorithms stay below the transport layers."""

from __future__ import annotations

import ast
from collections import defaultdict
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


def package_graph() -> dict[str, dict[str, set[str]]]:
    """package -> imported package -> the modules importing it (runtime imports only;
    ``if TYPE_CHECKING`` blocks are annotations, not dependencies)."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "v1":  # generated stubs
            continue
        src = rel.parts[0].removesuffix(".py")
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", 0) in skip:
                continue
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and node.level == 0 else [])
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


#: the upward imports that close today's cycles, being taken apart (this set may only
#: shrink): config's cross-domain rules import he; rpc/server.py imports the job manager
#: from runtime; the sdk re-exports the gRPC client that lives in rpc
BACK_EDGES = {("config", "he"), ("rpc", "runtime"), ("sdk", "rpc")}


def test_no_package_cycles_beyond_the_known_back_edges():
    graph = package_graph()
    for src, dst in BACK_EDGES:
        assert dst in graph.get(src, {}), f"{src} -> {dst} is gone: drop it from BACK_EDGES"
        del graph[src][dst]
    found = cycles(graph)
    assert not found, f"import cycles: {sorted(found)}"


def test_algorithms_never_import_transport_storage_or_deployment():
    graph = package_graph()
    bad = {(pkg, dep, tuple(sorted(mods))) for pkg in ALGORITHMS
           for dep, mods in graph.get(pkg, {}).items() if dep in TRANSPORT_AND_UP}
    assert not bad, bad


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b": {"a.x"}}, "b": {"c": {"b.y"}}, "c": {"a": {"c.z"}}, "d": {"a": set()}}
    assert cycles(graph) == {("a", "b"), ("b", "c"), ("a", "c")}
