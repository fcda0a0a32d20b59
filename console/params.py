"""Numbers read from requests: ids and counts in query parameters and JSON bodies, checked in one
place. A value no database column can hold (SQLite and PostgreSQL store ids as 64-bit integers)
is a field error naming the parameter (a 400), never a 500 from the database driver ("Python int too
large to convert to SQLite INTEGER", PostgreSQL's "out of range"), and a string of thousands of
digits is refused before `int()` is asked to read it."""

from __future__ import annotations

from collections.abc import Mapping

MAX_ID = 2**63 - 1  # the largest value of a BigAutoField (every table's id)
_MAX_ID_DIGITS = len(str(MAX_ID))


def whole_number(raw: str, *, least: int, most: int, clamp: bool = False) -> int | None:
    """The number `raw` spells (ASCII digits only: no sign, space or underscore), or None when it
    spells none or one outside least..most; with `clamp`, a larger number gives `most`."""
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit():
        return None
    number = int(raw) if len(raw) <= _MAX_ID_DIGITS else None  # not int() of thousands of digits
    if clamp and (number is None or number > most):
        return most if most >= least else None
    return number if number is not None and least <= number <= most else None


def number_param(
    params: Mapping[str, str],
    name: str,
    errors: dict[str, list[str]],
    *,
    least: int = 0,
    most: int = MAX_ID,
    clamp: bool = False,
    what: str = "a whole number",
) -> int | None:
    """Query parameter `name` as a number from least to most (with `clamp`, a larger one gives
    `most`); None when absent or empty. A bad value is added to `errors` (the caller raises
    them all at once) and gives None."""
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    number = whole_number(raw, least=least, most=most, clamp=clamp)
    if number is None:
        errors[name] = [f"must be {what} from {least}{'' if clamp else f' to {most}'}, not {raw[:40]!r}"]
    return number


def id_param(params: Mapping[str, str], name: str, errors: dict[str, list[str]]) -> int | None:
    """Query parameter `name` as an object's id (1 to MAX_ID), as `number_param`."""
    return number_param(params, name, errors, least=1, what="an id (a number)")


def is_id(value: object) -> bool:
    """Whether a JSON value is an id a table may hold (a bool is not a number here)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID
