"""Lazy imports (PEP 562 exports, and work deferred until a package loads): ``cvm --help`` must not pay for torch."""

from __future__ import annotations

import importlib.abc
import sys
from importlib import import_module
from importlib.machinery import ModuleSpec
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose names ``exports`` maps to their submodules (a name that
    is its submodule's own, ``{"functional": ".functional"}``, is the submodule)."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = import_module(exports[name], package)
        return module if exports[name].lstrip(".") == name else getattr(module, name)  # a submodule itself

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds module ``name`` like the other finders, and imports ``then`` once it has run."""

    def __init__(self, name: str, then: str) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        # The other finders find the module; a probe (importlib.util.find_spec) only looks, so nothing runs yet.
        spec = next((found for finder in sys.meta_path if finder is not self and hasattr(finder, "find_spec")
                     for found in [finder.find_spec(fullname, path, target)] if found is not None), None)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            import_module(self.then)

        spec.loader.exec_module = exec_module
        return spec


def import_after(name: str, then: str) -> None:
    """Import module ``then`` as soon as module ``name`` is imported (now, if it already is).

    ``import cvm_lightning`` registers the package's timm models this way:
    with timm's first import, not before, so commands that never build a
    model never load timm.
    """
    if name in sys.modules:
        import_module(then)
    elif not any(isinstance(f, _AfterImport) and (f.name, f.then) == (name, then) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, then))
