"""Print the fault suite's measured results as a table: ``python -m tests.faults.report``."""

from __future__ import annotations

import json
import sys

from tests.faults.conftest import RESULTS_DIR


def main() -> int:
    paths = sorted(RESULTS_DIR.glob("*.json"))
    if not paths:
        print(f"no results in {RESULTS_DIR}: run scripts/faults first", file=sys.stderr)
        return 1
    rows = []
    for path in paths:
        measured = json.loads(path.read_text())
        measured.pop("test", None)
        rows.append((path.stem, ", ".join(f"{k}={v}" for k, v in measured.items())))
    width = max(len(name) for name, _ in rows)
    print(f"{'scenario'.ljust(width)}  measured")
    print(f"{'-' * width}  {'-' * 8}")
    for name, measured_text in rows:
        print(f"{name.ljust(width)}  {measured_text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
