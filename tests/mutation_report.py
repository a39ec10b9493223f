"""Mutation score per module from the last `make mutation` run (reads mutmut's `mutants/**/*.py.meta`).

Score = killed / (killed + survived + no tests); timeouts count as killed (the mutant hung the code), as
mutmut itself counts them. Prints one line per module and exits 1 when a module is under `--min-score`.
`--survivors` also prints each surviving (or untested) mutant with the lines it changes, read from the mutated
copies in `mutants/` (one `mutmut show` per mutant takes a second each).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
from collections import Counter
from collections.abc import Iterator
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


def survivors(mutants: Path) -> Iterator[tuple[str, str, list[str]]]:
    """(mutant name, status, changed lines as ``- old`` / ``+ new``) of each counted mutant that was not killed."""
    for meta in sorted(mutants.rglob("*.py.meta")):
        keys = json.loads(meta.read_text())["exit_code_by_key"]
        left = {key: status_by_exit_code[code] for key, code in keys.items()}
        left = {key: status for key, status in left.items() if status in COUNTED - KILLED}
        if not left:
            continue
        source = meta.with_suffix("").read_text()
        lines = source.splitlines()
        functions = {  # name -> its lines (from line numbers: get_source_segment rescans the file each time)
            node.name: lines[node.lineno - 1 : node.end_lineno]
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        for key, status in left.items():
            name = key.rsplit(".", 1)[-1]
            original = functions.get(name.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", [])
            mutated = functions.get(name, [])
            changed = [
                line for line in difflib.ndiff(original[1:], mutated[1:]) if line.startswith(("- ", "+ "))
            ]  # the first line differs only in the function's name
            yield key, status, changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mutants", default="mutants", help="mutmut's working folder")
    parser.add_argument("--min-score", type=float, default=0.85)
    parser.add_argument("--survivors", action="store_true", help="list the mutants not killed and their changes")
    args = parser.parse_args(argv)
    if args.survivors:
        for key, status, changed in survivors(Path(args.mutants)):
            print(f"{key}: {status}")
            for line in changed:
                print(f"    {line.strip()}")
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
