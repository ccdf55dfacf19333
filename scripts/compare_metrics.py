"""Compare two folders of evaluations figure by figure (every number of every ``<name>/metrics.json``).

    python scripts/compare_metrics.py BEFORE AFTER [--tol 0]

Prints how many figures each evaluation has and every one that differs by more than ``--tol``
(absolute); exits 1 if any does. Used by ``scripts/engine_regression.sh``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def flat(o: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every number in a JSON value, keyed by its path (file names skipped)."""
    if isinstance(o, dict):
        for k, v in o.items():
            if k != "file":
                yield from flat(v, f"{prefix}/{k}")
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from flat(v, f"{prefix}[{i}]")
    elif isinstance(o, (int, float)) and not isinstance(o, bool):
        yield prefix, float(o)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--tol", type=float, default=0.0)
    a = p.parse_args()
    bad = 0
    for fb in sorted(a.before.glob("*/metrics.json")):
        name = fb.parent.name
        fa = a.after / name / "metrics.json"
        if not fa.exists():
            print(f"{name}: missing {fa}")
            bad += 1
            continue
        b, n = dict(flat(json.loads(fb.read_text()))), dict(flat(json.loads(fa.read_text())))
        diffs = [k for k in sorted(set(b) | set(n)) if k not in b or k not in n or abs(b[k] - n[k]) > a.tol]
        print(f"{name}: {len(b)} figures, {len(diffs)} differ (tol {a.tol})")
        for k in diffs:
            print(f"  {k}: before {b.get(k)}  after {n.get(k)}")
        bad += bool(diffs)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
