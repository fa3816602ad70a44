"""The package layout is the data flow: no module of core imports a later stage, none imports Streamlit, and no two import each other."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"

# Stages in the order data flows through them; a module may import its own stage and earlier ones.
STAGES = [
    ("core.records", "core.paths", "core.progress", "core.display"),  # what every stage shares
    ("core.io",),  # 1 input
    ("core.embedding",),  # 2
    ("core.search",),  # 3
    ("core.detection",),  # 4
    ("core.prediction",),  # 5 prediction and its metrics
    ("core.analysis",),  # 6 the stages composed
    ("core.audit",),  # 7
    ("core.methods",),  # 8
    ("core.maps",),  # 9
    ("core.report", "core.exports"),  # 10 sharing
    ("core.session",),  # what the dashboard keeps per user
    ("core.__main__",),  # the command line
]


def stage_of(module: str) -> int:
    for number, prefixes in enumerate(STAGES):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return number
    raise AssertionError(f"{module} belongs to no stage: add its package to STAGES")


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module of core this file imports, at its top or inside a function, type-only included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from core.x import module` names a module, not a function
            found |= {
                f"{node.module}.{alias.name}"
                for alias in node.names
                if CORE.parent.joinpath(*f"{node.module}.{alias.name}".split("."))
                .with_suffix(".py")
                .exists()
            }
    return {name for name in found if name == "core" or name.startswith(("core.", "streamlit"))}


MODULES = {module_name(path): imports_of(path) for path in sorted(CORE.rglob("*.py"))}


def test_every_module_belongs_to_a_stage_and_imports_none_after_its_own():
    upward = [
        f"{module} (stage {stage_of(module)}) imports {imported} (stage {stage_of(imported)})"
        for module, imported_modules in MODULES.items()
        for imported in imported_modules
        if imported.startswith("core.") and stage_of(imported) > stage_of(module)
    ]
    assert upward == []


def test_core_never_imports_streamlit():
    assert [
        module for module, names in MODULES.items() if any(n.startswith("streamlit") for n in names)
    ] == []


def test_no_modules_of_core_import_each_other():
    known = set(MODULES)
    graph = {
        module: {name for name in names if name in known and name != module}
        for module, names in MODULES.items()
    }
    cycles = []

    def visit(module, path):
        for imported in graph[module]:
            if imported in path:
                cycles.append(" -> ".join([*path[path.index(imported) :], imported]))
            elif imported not in done:
                visit(imported, [*path, imported])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert cycles == []
