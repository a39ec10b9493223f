"""`verify`: recompute a record's metrics from the images stored in its run directory (`verify_record`), with
the same code as the run that wrote it (`benchmark.run.recompute`; for a record of the spatial track's prompt set,
`benchmark.spatial.run.recompute`)."""

from __future__ import annotations

import math
from pathlib import Path

from benchmark.leaderboard.records import load_records
from benchmark.spatial.prompts import PROMPT_SET_NAME


def verify_record(
    record_path: str | Path,
    run_dir: str | Path | None = None,
    *,
    num_actors: int = 0,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
) -> list[str]:
    """Recompute a record's metrics from the images stored in its run directory (default: the record's folder);
    return every difference found (empty when the record checks out). The images' digest is compared too.
    Tolerances allow for float differences across machines; on the same machine the numbers are identical."""
    record_path = Path(record_path)
    record = load_records([record_path])[0]
    if record.benchmark.name == PROMPT_SET_NAME:
        from benchmark.spatial.run import recompute
    else:
        from benchmark.run import recompute
    run_dir = (
        Path(run_dir)
        if run_dir is not None
        else (record_path if record_path.is_dir() else record_path.parent)
    )
    try:
        metrics, details = recompute(record, run_dir, num_actors=num_actors)
    except ValueError as exc:  # missing or extra images, a changed benchmark or prompt file (its hash error)
        return [f"cannot recompute: {exc}"]
    problems = []
    stored_images = record.metric_details.get("images", {}).get("sha256")
    if stored_images != details["images"]["sha256"]:
        problems.append(
            f"images: digest {details['images']['sha256']} differs from the record's {stored_images}"
        )
    for key in sorted(record.metrics.keys() | metrics.keys()):
        old, new = record.metrics.get(key), metrics.get(key)
        if old is None or new is None or not math.isclose(old, new, rel_tol=rel_tol, abs_tol=abs_tol):
            problems.append(f"{key}: recorded {old!r}, recomputed {new!r}")
    return problems
