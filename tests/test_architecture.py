"""The import rules of docs/architecture.md, read from the source: packages import in one
direction (shards <- finetune <- pretrain <- slurm), and no two modules import each other, at the
top of a file or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shards", "finetune", "pretrain", "slurm")
# what each package may import besides itself
ALLOWED = {"shards": set(), "finetune": {"shards"}, "pretrain": {"shards", "finetune"},
           "slurm": {"shards", "finetune", "pretrain"}}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules that `path` imports anywhere in it (`from a import b` counts as a.b
    when that is a module, else as a)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, name, set(mods)) for name, path in mods.items()}


def test_packages_import_in_one_direction():
    wrong = [f"{a} imports {b}" for a, targets in graph().items() for b in targets
             if b.split(".")[0] != a.split(".")[0] and b.split(".")[0] not in ALLOWED[a.split(".")[0]]]  # fmt: skip
    assert not wrong, wrong


def test_no_import_circle():
    g = graph()
    # a package's __init__ importing its own modules is how it exposes them, not a circle
    edges = {a: {b for b in targets if not (g.get(b) is not None and a.startswith(b + ".") and a in g[b])}
             for a, targets in g.items()}  # fmt: skip
    circles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                circles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not circles, circles


def test_the_checker_sees_a_circle_and_a_wrong_direction(tmp_path, monkeypatch):
    """The two checks above on a made-up tree that breaks both rules."""
    for rel, text in {"shards/__init__.py": "", "shards/a.py": "from finetune import b\n",
                      "finetune/__init__.py": "", "finetune/b.py": "def f():\n    from shards import a\n",
                      "pretrain/__init__.py": "", "slurm/__init__.py": ""}.items():  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    g = graph()
    assert g["shards.a"] == {"finetune.b"} and g["finetune.b"] == {"shards.a"}
    for check in (test_packages_import_in_one_direction, test_no_import_circle):
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} passed on a tree that breaks it")
