"""The package's modules import one another without a circle, read from the source (every import statement, at the
top or inside a function), so that a new module finds one obvious place below the ones it uses."""

import ast
from pathlib import Path

import vtimellm_hf

PACKAGE_ROOT = Path(vtimellm_hf.__file__).parent


def module_graph() -> dict[str, set[str]]:
    """`{module: modules of the package it imports}`, packages' `__init__` files left out (they gather their
    submodules by design). A deprecated name that `_deprecated.moved_names` resolves when it is read is not an
    import of the module: its target is a string, looked up only by a caller of the old name."""
    modules = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        if path.name == "__init__.py":
            continue
        package = name.rsplit(".", 1)[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # `from . import checkpoints` imports a module; `from .hub import push_folder` a name of one
                imported.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                                for alias in node.names)  # fmt: skip
        graph[name] = {target for target in imported if target in modules and target != name
                       and modules[target].name != "__init__.py"}  # fmt: skip
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each once, as the path that closes it (a depth-first search)."""
    found, done = [], set()

    def visit(module, path):
        if module in path:
            circle = path[path.index(module) :]
            rotation = circle.index(min(circle))
            found.append(circle[rotation:] + circle[:rotation])
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return sorted({tuple(circle) for circle in found})


def test_the_graph_is_read_from_the_source():
    """The check below can fail: the reader sees imports at the top and inside functions, absolute and relative."""
    graph = module_graph()
    assert "vtimellm_hf.hub" in graph["vtimellm_hf.conversion"]
    assert "vtimellm_hf.checkpoints" in graph["vtimellm_hf.training.stages"]  # `from .. import checkpoints`
    assert "vtimellm_hf.training.trainer" in graph["vtimellm_hf.training.stages"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(module_graph()) == []


def test_checkpoints_import_only_the_model_and_publishing_only_what_lies_below_it():
    """Training, conversion and inference read checkpoints through one module, which knows none of them; the Hub
    push knows neither conversion nor training."""
    graph = module_graph()
    package = {module for module in graph["vtimellm_hf.checkpoints"] if module.startswith("vtimellm_hf.")}
    assert package <= {"vtimellm_hf.model"} | {module for module in graph if module.startswith("vtimellm_hf.model.")}
    assert not {"vtimellm_hf.conversion", "vtimellm_hf.training.stages"} & graph["vtimellm_hf.hub"]
