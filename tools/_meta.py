"""The ``--meta KEY=VALUE`` items of the ship tools, as a dict (a malformed item is a ValueError,
which the tools print as one line)."""
from __future__ import annotations


def parse_meta(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--meta {item!r}: expected KEY=VALUE")
        out[key] = value
    return out
