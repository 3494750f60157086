"""The package's own imports form no cycle: data flows one way (data -> models -> methods / bank -> metrics ->
engine -> tools). Every ``import`` / ``from ... import`` of an ``anomseg`` module counts, at module level or
inside a function (a function-level import that dodges a cycle is still a cycle)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "anomseg"


def module_names(root: Path) -> dict[str, Path]:
    mods = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}; ``from pkg import name`` points at ``pkg.name`` when that is a
    module, else at ``pkg``."""
    mods = module_names(root)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names if a.name.split(".")[0] == root.name]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.split(".")[0] == root.name:
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else resolve(base) for a in node.names]
            graph[m].update(t for t in targets if t and t != m)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_cycles_and_only_them():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set(), "f": {"g"}, "g": {"f"}}
    assert sorted(cycles(g)) == [["a", "b", "c"], ["f", "g"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "anomseg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import x\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from anomseg.sub import b\nx = 1\n")
    (pkg / "sub" / "b.py").write_text("from anomseg.sub.a import x\n")
    g = import_graph(pkg)
    assert g["anomseg.sub"] == {"anomseg.sub.a"} and g["anomseg.sub.a"] == {"anomseg.sub.b"}
    assert cycles(g) == [["anomseg.sub.a", "anomseg.sub.b"]]


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and graph["anomseg.engine.evaluate"]  # the walk really saw the package
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_a_runner_imports_only_itself_and_figures_leave_pyplot_alone():
    """``import anomseg.engine.train_seg`` (what tools/train_seg.py does) loads no other runner; drawing a figure
    never imports pyplot, so a notebook's matplotlib backend is the user's."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; import anomseg.engine.train_seg; "
            "print(sorted(m for m in sys.modules if m.startswith('anomseg.engine.'))); "
            "from pathlib import Path; from anomseg import viz; from anomseg.metrics.histogram import ScoreHistogram; "
            "h = ScoreHistogram(); h.update(np.arange(8, dtype=np.float32), np.arange(8) % 2); "
            "viz.plot_curves({'m': h}, Path(sys.argv[1])); print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(PACKAGE.parent / ".pytest_figures")], capture_output=True,
                         text=True, cwd=PACKAGE.parent, timeout=120)
    import shutil

    shutil.rmtree(PACKAGE.parent / ".pytest_figures", ignore_errors=True)
    assert out.returncode == 0, out.stderr[-2000:]
    modules, pyplot = out.stdout.splitlines()
    assert modules == "['anomseg.engine.train_seg']", modules
    assert pyplot == "False"
