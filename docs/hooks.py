"""MkDocs hooks: pages that show tables derived from the code, so they never drift from it."""

from __future__ import annotations

MARKERS = {
    "<!-- run-options -->": "cvm_lightning.app.run_config:options_markdown",
    "<!-- strategies -->": "cvm_lightning.app.strategies:strategies_markdown",
    "<!-- protocols -->": "cvm_lightning.app.protocols:protocols_markdown",
}


def on_page_markdown(markdown: str, **kwargs) -> str:
    from importlib import import_module

    for marker, target in MARKERS.items():
        if marker in markdown:
            module, function = target.split(":")
            markdown = markdown.replace(marker, getattr(import_module(module), function)())
    return markdown
