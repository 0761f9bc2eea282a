"""The tools' entry points: an error about the user's input files (missing, corrupt, or an
existing output made with other parameters) or config values ends the command with its message,
which names the file or key and the fix, and exit status 1, not a traceback.
The tools' ``main`` functions raise as library code does (their tests catch the exception);
their argument checks end with ``parser.error`` (status 2) before any work."""
import argparse
import os
from pathlib import Path
from typing import Callable, Mapping, Optional, TypeVar, Union

from ..config_checks_values import ConfigError
from ..data.datasets.synthetic import CorruptFileError

__all__ = ["INPUT_ERRORS", "output_folder_problem", "require_minimums", "require_output_folder", "run_tool"]

# Raised for inputs the user gives (ttd_d2's messages name the path or key and how to get or fix
# it; FileExistsError: a synthetic split generated with other parameters, or at another image
# size; ConfigError: invalid config values, ttd_d2.config_checks). Not every ValueError: as often
# a bug as a bad value, its traceback is wanted; the tools check their arguments in parse_args.
INPUT_ERRORS = (FileNotFoundError, FileExistsError, CorruptFileError, ConfigError)
T = TypeVar("T")


def run_tool(main: Callable[..., T], *args) -> T:
    """``main(*args)``, with :data:`INPUT_ERRORS` turned into ``SystemExit("error: <message>")``."""
    try:
        return main(*args)
    except INPUT_ERRORS as e:
        raise SystemExit(f"error: {e}") from None


def output_folder_problem(folder: Union[str, Path]) -> Optional[str]:
    """Why ``folder`` (there or not yet) cannot be created and written, or None: it, or its
    nearest existing parent, must be a writable folder."""
    path = Path(folder).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        return f"{existing} is not a folder: give a path whose parents are folders"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable: give a folder you can write to"
    return None


def require_output_folder(parser: argparse.ArgumentParser, option: str, folder: Union[str, Path]) -> None:
    """``parser.error`` naming ``option`` when :func:`output_folder_problem` finds one."""
    problem = output_folder_problem(folder)
    if problem:
        parser.error(f"{option} {folder}: {problem}")


def require_minimums(parser: argparse.ArgumentParser, args: argparse.Namespace, minimums: Mapping[str, int]) -> None:
    """``parser.error`` for the first option of ``minimums`` ({dest: smallest value}) that ``args``
    holds below its minimum (options left unset, None, are skipped)."""
    for dest, low in minimums.items():
        value = getattr(args, dest)
        if value is not None and value < low:
            parser.error(f"--{dest.replace('_', '-')} {value}: must be at least {low}")
