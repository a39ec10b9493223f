"""Mutation score per module from the last `make mutation` run (reads mutmut's `mutants/**/*.py.meta`).

Score = killed / (killed + survived + no tests); timeouts count as killed (the mutant hung the code), as
mutmut itself counts them. Prints one line per module and exits 1 when a module is under `--min-score`.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

KILLED = {"killed", "timeout", "caught by type check", "segfault"}
COUNTED = KILLED | {"survived", "no tests", "suspicious"}


def module_scores(mutants: Path) -> dict[str, Counter]:
    scores: dict[str, Counter] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        statuses = Counter(status_by_exit_code[code] for code in json.loads(meta.read_text())["exit_code_by_key"].values())
        if statuses:
            scores[str(meta.relative_to(mutants))[: -len(".meta")]] = statuses
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mutants", default="mutants", help="mutmut's working folder")
    parser.add_argument("--min-score", type=float, default=0.85)
    args = parser.parse_args(argv)
    below = []
    print(f"{'module':36s} {'mutants':>7s} {'killed':>6s} {'timeout':>7s} {'survived':>8s} {'no tests':>8s} {'score':>6s}")
    for module, statuses in module_scores(Path(args.mutants)).items():
        killed = sum(statuses[s] for s in KILLED)
        counted = sum(statuses[s] for s in COUNTED)
        score = killed / counted if counted else 1.0
        unchecked = sum(statuses.values()) - counted
        note = f"  ({unchecked} not checked)" if unchecked else ""
        print(
            f"{module:36s} {counted:7d} {killed:6d} {statuses['timeout']:7d} {statuses['survived']:8d}"
            f" {statuses['no tests']:8d}"
            f" {score:6.1%}{note}"
        )
        if score < args.min_score:
            below.append(module)
    if below:
        print(f"under {args.min_score:.0%}: {', '.join(below)}")
    return 1 if below else 0


if __name__ == "__main__":
    raise SystemExit(main())
