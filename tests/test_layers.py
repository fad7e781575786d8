"""The architecture, held: each module's imports, read from its syntax tree, follow the package's layers.

- the core (``errors``, ``settings``, ``atomic``, ``paths``, ``hardware``,
  ``heap``, ``image_files``) imports only the standard library, NumPy, Pillow and itself;
- no library subpackage imports the ``cvm`` program (``app``);
- within the library the graph runs one way: concepts, then streams and
  model, then data and training, then metrics, then deploy;
- the program's settings modules import nothing heavy at module level, so
  flags are checked before torch loads;
- the module graph has no cycle.

Each rule is checked on the package itself, and on a copy with one
deliberately broken import, to show that the check can fail.
"""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import pytest

import cvm_lightning

PACKAGE = Path(cvm_lightning.__file__).resolve().parent
CORE = {"", "_lazy", "errors", "settings", "atomic", "paths", "hardware", "heap", "image_files"}
# The library's subpackages by layer: a module may import its own subpackage, the core and lower layers only.
LAYERS = {"concepts": 1, "streams": 2, "model": 2, "data": 3, "training": 3, "metrics": 4, "deploy": 5, "app": 6,
          "__main__": 7}
CORE_MAY_IMPORT = {"numpy", "PIL"}
# What the command line must not load before it has checked the flags.
HEAVY = {"torch", "torchvision", "pytorch_lightning", "lightning_fabric", "lightning", "timm", "transformers",
         "torchmetrics", "avalanche", "onnx", "onnxruntime", "matplotlib", "sklearn", "jsonargparse"}
TORCH_FREE = ("app.cli", "app.run_config", "app.signatures", "app.strategies")


def module_name(path: Path, root: Path) -> str:
    """``model.module`` for ``root/model/module.py``; ``""`` for the package itself."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def read_imports(root: Path) -> dict[str, list[tuple[str, int, bool]]]:
    """Every module's imports: ``(imported name, line, at module level)``; package names relative to ``root``.

    A name inside the package is given relative to it (``model.module``);
    others keep their full name (``torch.nn``). Imports inside a function
    run only when it is called, so they are not at module level.
    """
    modules = {module_name(path, root) for path in root.rglob("*.py")}
    imports: dict[str, list[tuple[str, int, bool]]] = {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        is_package = path.name == "__init__.py"
        found: list[tuple[str, int, bool]] = []

        def visit(node: ast.AST, top: bool) -> None:
            for child in ast.iter_child_nodes(node):
                inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, ast.Import):
                    found.extend((alias.name, child.lineno, top) for alias in child.names)
                elif isinstance(child, ast.ImportFrom):
                    if child.level:  # relative: from the module's package, up level - 1 packages
                        base = name.split(".") if is_package else name.split(".")[:-1]
                        base = base[: len(base) - child.level + 1] if name else []
                        target = "cvm_lightning." + ".".join([*filter(None, base), *filter(None, [child.module])])
                    else:
                        target = child.module or ""
                    target = target.rstrip(".")
                    for alias in child.names:  # `from a import b` imports module a.b where there is one
                        inner_name = _inside(f"{target}.{alias.name}")
                        found.append((f"{target}.{alias.name}" if inner_name in modules else target, child.lineno, top))
                visit(child, inner)

        visit(ast.parse(path.read_text()), True)
        imports[name] = [(_inside(target), line, top) for target, line, top in found]
    return imports


def _inside(target: str) -> str:
    """A package-relative name for ``cvm_lightning.x.y`` (``x.y``), the full name for anything else."""
    if target == "cvm_lightning":
        return ""
    return target.removeprefix("cvm_lightning.") if target.startswith("cvm_lightning.") else "!" + target


def layer_of(name: str) -> str:
    top = name.split(".")[0]
    return "core" if name in CORE or top in CORE else top


def violations(root: Path) -> list[str]:
    """Every import of the package at ``root`` that breaks a rule of the module docstring, as readable lines."""
    imports = read_imports(root)
    found = []
    for name, targets in imports.items():
        where = f"cvm_lightning{'.' if name else ''}{name}"
        layer = layer_of(name)
        for target, line, top in targets:
            if target.startswith("!"):
                package = target[1:].split(".")[0]
                if layer == "core" and package not in CORE_MAY_IMPORT and package not in sys.stdlib_module_names:
                    found.append(f"{where}:{line} imports {target[1:]}: the core imports the standard library, "
                                 "NumPy and Pillow only")
                continue
            other = layer_of(target)
            if layer == "core" and other != "core":
                found.append(f"{where}:{line} imports cvm_lightning.{target}: the core imports only the core")
            elif layer not in ("core", "app", "__main__") and other == "app":
                found.append(f"{where}:{line} imports cvm_lightning.{target}: the library never imports the program")
            elif layer != "core" and other not in ("core", layer) and LAYERS[other] >= LAYERS[layer]:
                found.append(f"{where}:{line} imports cvm_lightning.{target}: {layer} sits below {other}")
    found += [f"cycle: {' -> '.join(cycle)}" for cycle in cycles(imports)]
    found += heavy_at_import(imports)
    return found


def _loaded_with(name: str, modules: set[str]) -> list[str]:
    """``name`` and the packages whose ``__init__`` runs before it (``a.b.c`` loads ``a`` and ``a.b``)."""
    parts = name.split(".") if name else []
    chain = [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]
    return [m for m in chain if m in modules]


def cycles(imports: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """The import cycles among the package's modules (every import, at module level or deferred)."""
    modules = set(imports)
    graph = {m: sorted({t for t, _, _ in imports[m] if t in modules and t not in (m, "")}) for m in modules}
    found, state = [], {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                found.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = "done"

    for module in sorted(modules):
        if module not in state:
            walk(module, [module])
    return found


def heavy_at_import(imports: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    """The heavy packages that importing each :data:`TORCH_FREE` module loads, through module-level imports."""
    modules = set(imports)
    found = []
    for start in TORCH_FREE:
        if start not in modules:
            continue
        seen, todo = set(), _loaded_with(start, modules)
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            for target, line, top in imports[module]:
                if not top:
                    continue
                if target.startswith("!"):
                    if target[1:].split(".")[0] in HEAVY:
                        found.append(
                            f"cvm_lightning.{start} loads {target[1:]} at import "
                            f"(cvm_lightning{'.' if module else ''}{module}:{line}); import it where it is used"
                        )
                else:
                    todo += [m for m in _loaded_with(target, modules) if m not in seen]
    return found


def test_the_package_follows_its_layers():
    assert violations(PACKAGE) == []


def test_the_program_is_a_subpackage_of_its_own():
    names = {p.stem for p in PACKAGE.glob("*.py")}
    assert names == {"__init__", "__main__", *CORE - {""}}, "top-level modules are the core, the package and its entry"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS) - {"__main__"}


BROKEN = {
    "core imports a third-party package": ("errors.py", "import torch\n", "the core imports the standard library"),
    "core imports the library": ("paths.py", "def later():\n    from cvm_lightning.model import CVMModule\n",
                                 "the core imports only the core"),
    "library imports the program": ("model/uses_app.py", "from cvm_lightning.app.runner import run\n",
                                    "the library never imports the program"),
    "library imports upwards": ("concepts/uses_model.py", "from cvm_lightning.model.heads import HEADS\n",
                                "concepts sits below model"),
    "library imports sideways": ("data/uses_training.py", "from cvm_lightning.training import schedule\n",
                                 "data sits below training"),
    "settings module loads torch": ("app/strategies.py", "import torch\n", "cvm_lightning.app.strategies loads torch"),
    "settings module loads torch through the library": (
        "app/signatures.py", "from cvm_lightning.model import module\n", "cvm_lightning.app.signatures loads torch"),
    "a cycle": ("deploy/export.py", "def later():\n    from cvm_lightning.deploy import predict\n", "cycle: deploy."),
}


@pytest.mark.parametrize("case", BROKEN)
def test_each_rule_fails_on_a_broken_import(case, tmp_path):
    relative, source, message = BROKEN[case]
    copy = tmp_path / "cvm_lightning"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / relative
    if case == "a cycle":  # predict already imports export: export importing predict closes the loop
        assert "cvm_lightning.deploy.export" in (copy / "deploy/predict.py").read_text()
    target.write_text((target.read_text() if target.exists() else "") + source)
    found = violations(copy)
    assert any(message in line for line in found), found
