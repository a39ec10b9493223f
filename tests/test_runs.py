"""`schemas.runs`: one run identity per output directory, files that only ever appear whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.runs import RunIdentityError, check_run_identity, pin_run_identity, write_atomically


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
        assert f"{out} holds a run with different settings {named}" in str(raised.value)


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
