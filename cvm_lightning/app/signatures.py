"""Settings read from a class's ``__init__`` signature and docstring, without importing the class.

``CVMModule`` and ``ClassIncrementalDataModule`` declare their settings once,
as keyword parameters with defaults and an ``Args:`` entry each. LightningCLI
reads them by introspection; ``cvm run``'s flags, ``RunConfig``,
``run_config.json``, the sweep's cache keys and the docs' option table read
them here, from the source file's syntax tree, so the command line answers
``--help`` and bad input before torch is imported.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Setting:
    """One keyword parameter: its name, annotation (as written), default and docstring help."""

    name: str
    annotation: str
    default: Any
    help: str

    @property
    def kind(self) -> str:
        """``bool``, ``int``, ``float``, ``path`` or ``str``: how a command line parses it."""
        for kind in ("bool", "int", "float"):
            if re.search(rf"\b{kind}\b", self.annotation):
                return kind
        return "path" if "Path" in self.annotation else "str"


def _docstring_args(docstring: str) -> dict[str, str]:
    """``{name: help}`` of a Google-style ``Args:`` section, each help on one line, RST roles removed."""
    helps: dict[str, list[str]] = {}
    in_args, current = False, None
    for line in docstring.splitlines():
        stripped = line.strip()
        if stripped == "Args:":
            in_args, indent = True, None
            continue
        if not in_args:
            continue
        if not stripped:
            continue
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        if width < indent:
            break
        match = re.match(r"(\w+):\s*(.*)", stripped)
        if width == indent and match:
            current = match.group(1)
            helps[current] = [match.group(2)]
        elif current is not None:
            helps[current].append(stripped)
    return {name: _plain(" ".join(parts)) for name, parts in helps.items()}


def _plain(text: str) -> str:
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).split(".")[-1], text)
    return text.replace("``", "")


def read_settings(relative_path: str, class_name: str, exclude: tuple[str, ...] = ()) -> dict[str, Setting]:
    """The keyword parameters of ``class_name.__init__`` in ``cvm_lightning/<relative_path>``, in order.

    Every default must be a literal (a number, string, ``None``, ...) or a
    name imported from a module that imports nothing heavy (such as
    :mod:`cvm_lightning.concepts.defaults`), so it is read without running
    the class's own module.
    """
    tree = ast.parse((PACKAGE / relative_path).read_text())
    imported = {alias.asname or alias.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}

    def value(default: ast.expr) -> Any:
        if isinstance(default, ast.Name):
            return getattr(import_module(imported[default.id]), default.id)
        return ast.literal_eval(default)

    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    helps = _docstring_args(ast.get_docstring(cls) or "")
    args = init.args
    positional = args.args[1:]  # after self
    pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
    settings = {}
    for arg, default in pairs:
        if arg.arg in exclude:
            continue
        settings[arg.arg] = Setting(
            name=arg.arg,
            annotation=ast.unparse(arg.annotation) if arg.annotation is not None else "",
            default=value(default),
            help=helps.get(arg.arg, ""),
        )
    return settings
