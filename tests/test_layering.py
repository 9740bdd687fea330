"""Which room of hilrl may import which (docs/ARCHITECTURE.md, "Rooms and what each may import").

Every import counts: module level, inside functions and under ``if TYPE_CHECKING:``. A lazy import still
runs the other module's code when it is reached, so a circle through a function is still a circle.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]

# the rooms from the bottom up; a module may import its own room and the rooms below it. Rooms of one rank
# are peers: they may import each other, never in a circle.
RANKS = {
    "hilrl.errors": 0, "hilrl.plugins": 0,
    "hilrl": 1,  # the package itself: registers the task ids (gymnasium only)
    "hilrl.data": 2,
    "hilrl.envs": 3,
    "hilrl.policies": 4, "hilrl.feedback": 4, "hilrl.llm": 4,
    "hilrl.config": 5,
    "hilrl.runtime": 6,
    "hilrl.apps": 7,
    "hilrl.cli": 8,
}
# what the robot side (hardware/) may import of hilrl: the wire, its keys, the errors, and the MuJoCo
# tasks for the reference driver
HARDWARE_MAY_IMPORT = ("hilrl.envs.protocol", "hilrl.envs.auth", "hilrl.errors", "hilrl.envs", "hilrl.envs.tasks")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    """Every module (or module.name) ``path`` imports, wherever the import statement stands."""
    name = module_name(path)
    return imports_in(path.read_text(), name if path.name == "__init__.py" else name.rpartition(".")[0])


def imports_in(source: str, package: str) -> set[str]:
    """The hilrl (and hardware) modules a source imports; ``package`` resolves its relative imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..y import z
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m == "hilrl" or m.startswith(("hilrl.", "hardware"))}


def graph() -> dict[str, set[str]]:
    """hilrl's modules -> the hilrl modules each imports (a ``from m import name`` counts as importing ``m``)."""
    paths = {module_name(p): p for p in (ROOT / "hilrl").rglob("*.py")}

    def resolve(target: str) -> str:
        while target not in paths and "." in target:
            target = target.rsplit(".", 1)[0]
        return target

    return {m: {resolve(t) for t in imports(p)} - {m} for m, p in paths.items()}


def room(module: str) -> str:
    return max((r for r in RANKS if module == r or module.startswith(r + ".")), key=len)


def test_no_import_circle_counting_imports_inside_functions():
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def strongconnect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                strongconnect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            strongconnect(module)
    assert not circles, "import circles (each group imports itself back):\n" + "\n".join(map(str, circles))


def test_every_import_points_down_the_layers():
    upward = []
    for module, targets in sorted(graph().items()):
        for target in sorted(targets):
            if target.startswith("hardware"):
                upward.append(f"{module} imports {target} (nothing under hilrl/ imports hardware/)")
            elif RANKS[room(target)] > RANKS[room(module)]:
                upward.append(f"{module} ({room(module)}) imports {target} ({room(target)}), a room above it")
    assert not upward, "\n".join(upward)


def test_the_robot_side_imports_only_the_wire_and_the_tasks():
    for path in (ROOT / "hardware").rglob("*.py"):
        for target in imports(path):
            if target.startswith("hilrl"):
                allowed = any(target == a or target.startswith(a + ".") for a in HARDWARE_MAY_IMPORT)
                assert allowed, f"{path.relative_to(ROOT)} imports {target}"


def test_the_checker_sees_imports_inside_functions_and_type_checking():
    """The rule reads what a lazy import would hide from a module-level scan."""
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hilrl.runtime import run\n"
              "def f():\n    from ..cli import main\n")
    assert {"hilrl.runtime.run", "hilrl.cli.main"} <= imports_in(source, "hilrl.data")
