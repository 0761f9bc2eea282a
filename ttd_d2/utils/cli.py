"""The tools' entry points: an error about the user's input files (missing, corrupt) ends the
command with its message, which names the file and the fix, and exit status 1, not a traceback.
The tools' ``main`` functions raise as library code does (their tests catch the exception)."""
from typing import Callable, TypeVar

from ..data.datasets.synthetic import CorruptFileError

__all__ = ["INPUT_ERRORS", "run_tool"]

# Raised for inputs the user gives (ttd_d2's messages name the path and how to get or fix it).
INPUT_ERRORS = (FileNotFoundError, CorruptFileError)
T = TypeVar("T")


def run_tool(main: Callable[..., T], *args) -> T:
    """``main(*args)``, with :data:`INPUT_ERRORS` turned into ``SystemExit("error: <message>")``."""
    try:
        return main(*args)
    except INPUT_ERRORS as e:
        raise SystemExit(f"error: {e}") from None
