"""One implementation of checking the fields of index-file records (the synthetic splits'
``annotations.json`` / ``captions.jsonl``, CC3M-TagMask's JSON files): each error names the file,
the record, the field and the fix."""
from __future__ import annotations

from typing import Any, Optional

__all__ = ["CorruptFileError", "record_field"]


class CorruptFileError(OSError):
    """A dataset file exists but cannot be read as what it should be."""


_KINDS = {str: "a non-empty string", list: "a list of non-empty strings", "objects": "a non-empty list of "
          "objects {'category': str, 'category_id': int, 'dominant': bool}"}


def _valid(value: Any, kind) -> bool:
    if kind is str:
        return isinstance(value, str) and bool(value.strip())
    if kind is list:
        return isinstance(value, list) and all(isinstance(t, str) and t.strip() for t in value)
    return isinstance(value, list) and bool(value) and all(  # "objects"
        isinstance(o, dict) and isinstance(o.get("category"), str) and type(o.get("category_id")) is int
        and isinstance(o.get("dominant"), bool) for o in value)


def record_field(entry: Any, key: str, kind, where: str, fix: str, required: bool = True) -> Optional[Any]:
    """``entry[key]``, checked to be of ``kind``: ``str`` (a non-empty string, not only blanks),
    ``list`` (a list, possibly empty, of non-empty strings) or ``"objects"``; None if absent and
    not ``required``. Else ``CorruptFileError("<where>: ...; <fix>")``: ``where`` names the file
    (and the record), ``fix`` what to do."""
    if not isinstance(entry, dict):
        raise CorruptFileError(f"{where}: must be a JSON object, got {type(entry).__name__}; {fix}")
    if key not in entry:
        if required:
            raise CorruptFileError(f"{where}: missing field '{key}'; {fix}")
        return None
    if not _valid(entry[key], kind):
        raise CorruptFileError(f"{where}: field '{key}' must be {_KINDS[kind]}, got {entry[key]!r}; {fix}")
    return entry[key]
