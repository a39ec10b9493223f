"""`schemas.runs`: one run identity per output directory, files that only ever appear whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.runs import (
    RunIdentityError,
    check_run_identity,
    init_ray,
    log_progress,
    pin_run_identity,
    write_atomically,
)


def test_a_directory_keeps_the_identity_of_its_first_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    identity = {"model": "m", "limits": {"max_objects": 3}, "seed": 0}
    check_run_identity(out, identity)  # nothing pinned yet
    pin_run_identity(out, identity)
    assert json.loads((out / "run.json").read_text()) == identity
    check_run_identity(out, {"seed": 0, "limits": {"max_objects": 3}, "model": "m"})  # key order does not matter
    pin_run_identity(out, {"model": "other"})  # pinning again never rewrites the first identity
    assert json.loads((out / "run.json").read_text()) == identity
    for changed, named in [
        ({**identity, "model": "m2"}, "(model)"),
        ({**identity, "limits": {"max_objects": 4}, "extra": 1}, "(extra, limits)"),
        ({"model": "m", "limits": {"max_objects": 3}}, "(seed)"),
    ]:
        with pytest.raises(RunIdentityError) as raised:
            check_run_identity(out, changed)
        assert str(raised.value) == (
            f"{out} holds a run with different settings {named}; "
            "use a new --output directory, or the same settings to resume"
        )


def test_an_identity_of_an_older_layout_is_upgraded_before_the_comparison(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pin_run_identity(out, {"model": "m", "max_objects": 3})  # as an older version of a job pinned it

    def nest(stored: dict) -> dict:
        return {"model": stored["model"], "limits": {"max_objects": stored["max_objects"]}} if "max_objects" in stored else stored

    check_run_identity(out, {"model": "m", "limits": {"max_objects": 3}}, upgrade=nest)
    assert json.loads((out / "run.json").read_text()) == {"model": "m", "max_objects": 3}  # left as it was
    with pytest.raises(RunIdentityError, match=r"different settings \(limits\)"):
        check_run_identity(out, {"model": "m", "limits": {"max_objects": 4}}, upgrade=nest)
    with pytest.raises(RunIdentityError, match=r"different settings \(limits, max_objects\)"):
        check_run_identity(out, {"model": "m", "limits": {"max_objects": 3}})  # no upgrade: another layout


def test_a_failed_write_leaves_nothing_under_the_final_name(tmp_path: Path) -> None:
    target = tmp_path / "data.json"

    def fails(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fails)
    assert not target.exists()
    write_atomically(target, lambda tmp: tmp.write_text("whole"))
    assert target.read_text() == "whole" and [p.name for p in tmp_path.iterdir() if p.name == "data.json"]


def test_run_json_is_sorted_indented_json_in_a_directory_made_as_needed(tmp_path: Path) -> None:
    """The exact bytes (a file people read and diff): keys sorted at every level, 2-space indent, a final newline;
    the directory and its parents are made when missing and taken as they are when present."""
    expected = '{\n  "b": [\n    1,\n    2\n  ],\n  "limits": {\n    "a": 1,\n    "z": 0\n  }\n}\n'
    for out in (tmp_path / "new" / "nested", tmp_path):  # missing parents, then an existing directory
        pin_run_identity(out, {"limits": {"z": 0, "a": 1}, "b": (1, 2)})
        assert (out / "run.json").read_text() == expected


def test_init_ray_joins_the_cluster_of_ray_address_or_starts_a_private_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray()
    init_ray(num_cpus=3, dashboard=True)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # `ray job submit` sets it
    init_ray(num_cpus=3)
    assert calls == [
        {"address": "local", "num_cpus": None, "include_dashboard": False},
        {"address": "local", "num_cpus": 3, "include_dashboard": True},
        {},
    ]
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    init_ray()
    assert len(calls) == 3  # already initialised: nothing


def test_log_progress_shows_info_lines_with_time_level_and_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    log_progress()
    (handler,) = root.handlers
    assert root.level == logging.INFO
    assert handler.formatter._fmt == "%(asctime)s %(levelname)s %(name)s: %(message)s"
    log_progress()  # a no-op once configured
    assert root.handlers == [handler]
