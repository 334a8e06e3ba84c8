"""Each layer imports only from the layers below it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rheon"

# Bottom to top. Modules directly under rheon/ (the front door, testing) may import anything.
LAYERS = ["core", "time", "io", "state", "operators", "cep", "runtime", "sql", "api", "apps", "cli", "web"]
RANK = {name: i for i, name in enumerate(LAYERS)}
# cep is an operator library (below runtime, which builds its operator from the plan).
RANK.update({"sql": RANK["runtime"] + 1, "apps": RANK["api"] + 1, "web": RANK["api"] + 1})
# apps sits below cli and web, which present it.
RANK["cli"] = RANK["web"] = RANK["apps"] + 1


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "rheon" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in RANK else None


def test_no_upward_imports():
    violations = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        own = _layer(".".join(rel.parts))
        if own is None:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module]
                if node.module == "rheon":
                    targets = [f"rheon.{a.name}" for a in node.names]
            for target in targets:
                layer = _layer(target)
                if layer is not None and RANK[layer] > RANK[own]:
                    violations.append(f"{rel}: imports {target} ({own} -> {layer})")
                if target == "rheon" and own != "apps" and own != "cli":
                    violations.append(f"{rel}: imports the front door 'rheon' from inside a layer")
    assert violations == []


def test_layers_exist_as_folders():
    present = {p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert {"core", "time", "io", "operators", "runtime", "api"} <= present


def _module_imports() -> dict[str, set[str]]:
    """For each rheon module, the rheon modules it imports (also under TYPE_CHECKING or in a function)."""
    modules: dict[str, Path] = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    imports: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            imports[name].update(t for t in targets if t in modules and t != name)
    return imports


def test_no_import_circles():
    """No module reaches itself through imports: each can be read, typed and changed from the
    bottom up (a TYPE_CHECKING import counts: it is a circle for readers and type checkers)."""
    imports = _module_imports()
    circles = []
    for start in imports:
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for target in imports[module]:
                if target == start:
                    circles.append(" -> ".join([*path, start]))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    assert circles == []
