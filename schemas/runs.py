"""What every job shares at run time: joining Ray, log lines, whole files only, and one run identity per output
directory.

`init_ray` starts or joins Ray the same way for every job. A job that can resume (annotate, benchmark run) pins
the settings its outputs depend on in ``OUT/run.json`` (`schemas.layout.RUN_FILE`). A later run into the same
directory must have the same identity, or it is refused with the keys that differ, so a resume never mixes
outputs of two configurations.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from schemas.layout import RUN_FILE

__all__ = [
    "TMP_MARK",
    "TMP_PREFIX",
    "RunIdentityError",
    "check_run_identity",
    "init_ray",
    "log_progress",
    "pin_run_identity",
    "write_atomically",
]

# A file being written is hidden (``.name.tmp-<uuid>``) until it is renamed into place; readers skip such names.
TMP_PREFIX = "."
TMP_MARK = ".tmp-"


def init_ray(num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Start or join Ray unless already initialised: join the cluster named by ``RAY_ADDRESS`` (``ray job submit``
    sets it), else start a private in-process instance (``address="local"``, never an unrelated local cluster),
    with the dashboard only if asked for (it doubles the start-up time of a small local run)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard)


def log_progress() -> None:
    """Show the jobs' INFO progress lines (time, level, logger) on stderr, in the driver and in Ray workers alike;
    a no-op where logging is already configured."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class RunIdentityError(ValueError):
    """The output directory holds a run with another identity; the message names the differing keys."""


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write` a hidden temporary file beside `path`, then rename it into place: `path` only ever appears whole."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}{TMP_MARK}{uuid.uuid4().hex}")
    write(tmp)
    os.replace(tmp, path)


def _canonical(identity: Mapping[str, Any]) -> dict[str, Any]:
    """`identity` as JSON reads it back (tuples become lists, keys strings), for comparisons."""
    return json.loads(json.dumps(identity))


def check_run_identity(
    directory: Path,
    identity: Mapping[str, Any],
    *,
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """Raise `RunIdentityError` when ``directory/run.json`` exists and differs from `identity` (compared as JSON).

    `upgrade`, where a job's identity changed layout, turns a stored identity of an older layout into today's
    before the comparison (the file is left as it is), so a setting renamed or regrouped is not a new run."""
    path = Path(directory) / RUN_FILE
    if not path.exists():
        return
    stored, wanted = json.loads(path.read_text()), _canonical(identity)
    if upgrade is not None:
        stored = _canonical(upgrade(stored))
    if changed := sorted(k for k in wanted.keys() | stored.keys() if wanted.get(k) != stored.get(k)):
        raise RunIdentityError(
            f"{directory} holds a run with different settings ({', '.join(changed)}); "
            "use a new --output directory, or the same settings to resume"
        )


def pin_run_identity(directory: Path, identity: Mapping[str, Any]) -> None:
    """Write ``directory/run.json`` (atomically) unless it exists; call `check_run_identity` first."""
    path = Path(directory) / RUN_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_canonical(identity), indent=2, sort_keys=True) + "\n"
        write_atomically(path, lambda tmp: tmp.write_text(text))
