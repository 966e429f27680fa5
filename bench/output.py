"""How a benchmark hands its result over: the JSON file named by --out (atomic), else stdout."""
from __future__ import annotations

import json

from cream_rt.atomic import write_json


def emit(result: dict, out: str | None) -> None:
    """Write `result` to `out` as indented JSON, or print it where no file is named."""
    if out:
        write_json(out, result)
    else:
        print(json.dumps(result, indent=2))
