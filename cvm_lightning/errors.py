"""Exceptions raised for bad input. Each message says what to fix."""

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` Did you mean a, b?`` for the choices close to ``name``, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.6)
    return f" Did you mean {', '.join(close)}?" if close else ""


class CVMError(Exception):
    """Base class of every error this package raises on purpose.

    The command line prints the message of these errors (no traceback) and
    exits non-zero.
    """


class ConfigError(CVMError, ValueError):
    """An unknown name or an invalid setting (backbone, benchmark, loss, ...)."""


class ConceptError(CVMError, KeyError):
    """A label has no concept text, or a concept name is duplicated."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TextModelNotFoundError(CVMError, OSError):
    """The text model could not be loaded from the installed files."""


class DataError(CVMError, ValueError):
    """Missing dataset files, an empty experience or badly shaped images."""


class TrainingDivergedError(CVMError, FloatingPointError):
    """The loss became NaN or infinite."""
