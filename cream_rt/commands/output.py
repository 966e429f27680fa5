"""How subcommands print: one JSON object on stdout (`--json`), or a readable table."""
from __future__ import annotations

import json
import sys

__all__ = ["print_json", "print_table"]


def print_json(obj) -> None:
    """Machine-readable output: one JSON object on stdout."""
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def print_table(rows: list[tuple[str, object]], title: str | None = None) -> None:
    """A two-column human-readable table on stdout."""
    if title:
        print(title)
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {text}")
