"""Sizes in binary units, as libvirt counts them: `{{ pool.capacity_bytes|binary }}` -> "252.0\u00a0GiB"."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


@register.filter
def binary(value: Any) -> str:
    """Bytes as the largest binary unit that keeps the number at least 1 (one decimal from KiB
    on); "—" for what is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    size, unit = float(value), 0
    while abs(size) >= 1024 and unit < len(UNITS) - 1:
        size /= 1024
        unit += 1
    # A no-break space: a size never wraps between its number and its unit.
    return f"{int(size)}\xa0B" if unit == 0 else f"{size:.1f}\xa0{UNITS[unit]}"
