"""Field accessors every converter uses: typed reads of a source row's fields and timestamps.

Each helper either returns a typed value or raises RowRejected with the quarantine reason a
reader would expect (missing_field, wrong_type, empty_text), so converters stay declarative.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from distill.records import QuarantineReason
from distill.records.common import UtcDatetime, is_blank_text
from distill.errors import RowRejected
from distill.sources.base import RowContext

SIG_KEY_CHARS = 16
_TIMESTAMP = TypeAdapter(UtcDatetime)


def parse_timestamp(value: Any, field: str) -> datetime:
    """ISO-8601 text or epoch seconds/milliseconds -> UTC datetime, else RowRejected."""
    if value is None or value == "":
        raise RowRejected(QuarantineReason.MISSING_TIMESTAMP, f"no timestamp in '{field}'")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RowRejected(
            QuarantineReason.INVALID_TIMESTAMP, f"'{field}' is {type(value).__name__}, not a timestamp"
        )
    try:
        return _TIMESTAMP.validate_python(value)
    except ValidationError:
        raise RowRejected(QuarantineReason.INVALID_TIMESTAMP, f"'{field}'={value!r:.60} is not a timestamp") from None


def first_timestamp(row: dict[str, Any], *fields: str) -> datetime:
    """The first present timestamp field among `fields`."""
    for field in fields:
        if row.get(field) not in (None, ""):
            return parse_timestamp(row[field], field)
    raise RowRejected(QuarantineReason.MISSING_TIMESTAMP, f"none of {list(fields)} present")


def get_path(row: Any, path: str) -> Any:
    """Value at a dotted path ("a.b.0.c"), or None when any step is missing."""
    current = row
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
    return current


def require_str(row: dict[str, Any], field: str, *, allow_empty: bool = False) -> str:
    value = get_path(row, field)
    if value is None:
        raise RowRejected(QuarantineReason.MISSING_FIELD, f"missing '{field}'")
    if not isinstance(value, str):
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'{field}' is {type(value).__name__}, expected str")
    if not allow_empty and is_blank_text(value):
        reason = QuarantineReason.EMPTY_TEXT
        raise RowRejected(reason, f"'{field}' is empty")
    return value


def optional_str(row: dict[str, Any], field: str) -> str | None:
    value = get_path(row, field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'{field}' is {type(value).__name__}, expected str")
    return value


def optional_int(row: dict[str, Any], field: str) -> int | None:
    value = get_path(row, field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'{field}' is {type(value).__name__}, expected int")
    return value


def str_list(row: dict[str, Any], field: str) -> list[str]:
    """A list of strings; a single string becomes a one-item list; None becomes []."""
    value = get_path(row, field)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'{field}' must be a list of strings")
    return list(value)



def run_id(ctx: RowContext, key: str | None) -> str:
    """`<source>:<natural key>`; rows without a usable key fall back to a sig_hash prefix, so
    the id stays content-derived and stable."""
    return f"{ctx.source}:{key}" if key else f"{ctx.source}:sig-{ctx.sig_hash[:SIG_KEY_CHARS]}"


def key_part(value: Any) -> str | None:
    """A natural-key component: a non-empty string or an integer; anything else is unusable."""
    if isinstance(value, str) and not is_blank_text(value):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def natural_key(row: dict[str, Any], *alternatives: tuple[str, ...]) -> str | None:
    """The first alternative whose fields are all usable, joined with ':'; None if none is."""
    for fields in alternatives:
        parts = [key_part(get_path(row, f)) for f in fields]
        if all(p is not None for p in parts):
            return ":".join(p for p in parts if p is not None)
    return None


def require_bool(row: dict[str, Any], field: str) -> bool:
    value = get_path(row, field)
    if value is None:
        raise RowRejected(QuarantineReason.MISSING_FIELD, f"missing '{field}'")
    if not isinstance(value, bool):
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'{field}' is {type(value).__name__}, expected bool")
    return value


def optional_bool(row: dict[str, Any], field: str) -> bool | None:
    value = get_path(row, field)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'{field}' is {type(value).__name__}, expected bool")
    return value


def require_int(row: dict[str, Any], field: str) -> int:
    value = get_path(row, field)
    if value is None:
        raise RowRejected(QuarantineReason.MISSING_FIELD, f"missing '{field}'")
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'{field}' is {type(value).__name__}, expected int")
    return value


def require_number(row: dict[str, Any], field: str) -> float:
    value = optional_number(row, field)
    if value is None:
        raise RowRejected(QuarantineReason.MISSING_FIELD, f"missing '{field}'")
    return value


def optional_number(row: dict[str, Any], field: str) -> float | None:
    """A finite number; an integer too large for a float is a wrong type, not an OverflowError."""
    value = get_path(row, field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'{field}' is {type(value).__name__}, expected number")
    try:
        number = float(value)
    except OverflowError:
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'{field}' is too large for a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'{field}' is not a finite number")
    return number


def strict_str_list(row: dict[str, Any], field: str) -> list[str]:
    """A list of strings (absent -> []); unlike base.str_list a bare string is a wrong type,
    for fields where a list is the contract (failure markers, steps)."""
    value = get_path(row, field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'{field}' must be a list of strings")
    return list(value)


def key_or_int_str(row: dict[str, Any], field: str) -> str | None:
    """An identifier that may be logged as text or as a number (phase 41, "41")."""
    value = get_path(row, field)
    if value is None:
        return None
    part = key_part(value)
    if part is None:
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'{field}' is {type(value).__name__}, expected str or int")
    return part



def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """Metadata without absent fields (keeps evidence rows small and byte-stable)."""
    return {k: v for k, v in values.items() if v is not None}


def dict_or_none(row: dict[str, Any], field: str) -> dict[str, Any] | None:
    value = get_path(row, field)
    return value if isinstance(value, dict) else None
