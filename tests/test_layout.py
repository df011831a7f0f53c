"""The import picture: ``sdxs_core`` and ``trainers`` never reach up into ``benchmarks`` or ``app``, and
``sdxs_core``'s modules import each other without a cycle. Read from the source (ast), so imports inside
functions count too: a cycle hidden in a function still ties two modules into one."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sdxs_core", "trainers")
UPWARD = ("benchmarks", "app")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports, absolute names; ``from pkg import mod`` counts as ``pkg.mod``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported(name, path, set(mods)) for name, path in mods.items()}


def upward(name: str, imports: set[str]) -> list[str]:
    return sorted(i for i in imports if i.split(".")[0] in UPWARD)


def test_the_import_reader_resolves_relative_and_submodule_imports():
    edges = graph()
    assert "sdxs_core.errors" in edges["sdxs_core.loading"]  # from .errors import ...
    assert "sdxs_core.lora" in edges["sdxs_core.fits"]  # from .lora import ... inside a function
    assert {"sdxs_core.engine", "sdxs_core.loading"} <= edges["sdxs_core"]  # the package's own __init__


def test_sdxs_core_and_trainers_never_import_benchmarks_or_app():
    found = {name: upward(name, imports) for name, imports in graph().items()}
    assert {name: bad for name, bad in found.items() if bad} == {}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among ``edges``' own modules (as a path that returns to its start), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node] & edges.keys()):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_sdxs_core_modules_import_each_other_without_a_cycle():
    core = {name: imports for name, imports in graph().items() if name.split(".")[0] == "sdxs_core"}
    assert find_cycle(core) is None, " -> ".join(find_cycle(core))
