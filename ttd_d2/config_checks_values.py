"""The value checks every config check is built of: each returns ``None`` or one problem
(a sentence naming the key, the value, what is allowed and the fix), and ``raise_problems``
raises them all as one :class:`ConfigError`."""
import math
from typing import Callable, List, Optional, Sequence

__all__ = ["ConfigError", "Problem", "betas", "choice", "flag", "names", "number", "raise_problems", "templates"]

Problem = Optional[str]


class ConfigError(ValueError):
    """Invalid config values, each problem naming its key and the fix (``problems``). A
    ``ValueError`` for library callers; the tools end on it with its message (``utils.cli``)."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems)


def raise_problems(problems: List[Problem], what: str) -> None:
    problems = [p for p in problems if p]
    if problems:
        listed = "\n  - ".join(problems)
        raise ConfigError(f"invalid {what} config ({len(problems)} problem(s)):\n  - {listed}", problems)


def choice(key: str, value, allowed: Sequence[str], fix: str = "") -> Problem:
    if value not in allowed:
        return f"{key} = {value!r} is unknown: use one of {', '.join(allowed)}{fix}"
    return None


def flag(key: str, value) -> Problem:
    return None if isinstance(value, bool) else f"{key} = {value!r}: must be True or False"


def number(key: str, value, ok: Callable[[float], bool], allowed: str, integer: bool = False,
            fix: str = "") -> Problem:
    """``value`` must be a finite number (an int when ``integer``) for which ``ok`` holds."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        return f"{key} = {value!r}: must be {'an integer' if integer else 'a number'} {allowed}{fix}"
    return None if ok(value) else f"{key} = {value!r}: must be {allowed}{fix}"


def names(key: str, values, allowed: Sequence[str]) -> Problem:
    """A non-empty list of distinct names from ``allowed``."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        return f"{key} = {values!r}: must be a list of names from {', '.join(allowed)} (not a string)"
    unknown = [v for v in values if v not in allowed]
    if unknown or not values or len(set(values)) != len(values):
        return f"{key} = {list(values)!r}: must be a non-empty list of distinct names from {', '.join(allowed)}"
    return None


def templates(key: str, templates) -> Problem:
    if isinstance(templates, (list, tuple)) and templates and all(isinstance(t, str) and "{}" in t for t in templates):
        return None
    return f"{key} = {templates!r}: must be a non-empty list of strings, each with '{{}}' for the word"


def betas(key: str, betas) -> Problem:
    def beta(b):
        return isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1

    if isinstance(betas, (list, tuple)) and len(betas) == 2 and all(beta(b) for b in betas):
        return None
    return f"{key} = {betas!r}: must be two numbers in [0, 1) (AdamW's beta1, beta2)"
