"""The CompSG-Bench leaderboard: result records → Markdown and a static, self-contained HTML page; and `verify`,
which recomputes a record's metrics from its stored images.

    python -m benchmark.leaderboard render RECORD_OR_RUN_DIR... --output DIR   # DIR/leaderboard.md, DIR/index.html
    python -m benchmark.leaderboard verify RECORD [--run-dir RUN_DIR]          # exit 1 on any difference

Each subcommand's settings are a typed model (`RenderSettings`, `VerifySettings`; `schemas.settings`): flags,
``--config`` YAML (flags win; the positional records are ``runs:`` / ``record:`` there), ``--help`` with every
default (``python -m benchmark.leaderboard render --help``) and ``--version``.

An invalid record stops `render` before anything is written, with one line per bad file naming the file and
the field (exit status 2); ``--skip-invalid`` renders the valid records instead and lists the skipped files as
warnings. `render` links each run to its ``result.json`` and, when the run directory holds generated images,
to a grid of its first images under DIR/samples/ (`benchmark.leaderboard.grid`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import Field
from pydantic_settings import CliPositionalArg

from benchmark.leaderboard.grid import with_grid
from benchmark.leaderboard.markdown import render_markdown
from benchmark.leaderboard.page import render_html
from benchmark.leaderboard.records import RecordError, load_entries
from benchmark.leaderboard.verify import verify_record
from schemas.settings import JobSettings, package_version, parse_settings, settings_parser

PROG = "python -m benchmark.leaderboard"


class RenderSettings(JobSettings):
    """Settings of `python -m benchmark.leaderboard render`."""

    runs: CliPositionalArg[list[Path]] = Field(
        [], description="result.json files or run directories (at least one; `runs:` in --config)"
    )
    output: Path = Field(description="the folder to write leaderboard.md, index.html and samples/ to")
    skip_invalid: bool = Field(False, description="render the valid records and warn about invalid ones (off: exit 2)")
    grid_images: int = Field(8, ge=0, description="images per run in the sample grid linked from each row (0: no grids)")


class VerifySettings(JobSettings):
    """Settings of `python -m benchmark.leaderboard verify`."""

    record: CliPositionalArg[Path | None] = Field(
        None, description="a result.json file or a run directory (required; `record:` in --config)"
    )
    run_dir: Path | None = Field(None, description="where the run's images are (unset: the record's folder)")
    num_actors: int = Field(0, ge=0, description="Ray actors for the judge and the features (0: in this process)")
    rel_tol: float = Field(1e-6, ge=0, description="relative tolerance of a recomputed metric")
    abs_tol: float = Field(1e-9, ge=0, description="absolute tolerance of a recomputed metric")


# subcommand -> (its settings, its help line)
SUBCOMMANDS: dict[str, tuple[type[JobSettings], str]] = {
    "render": (RenderSettings, "render records to DIR/leaderboard.md and DIR/index.html"),
    "verify": (VerifySettings, "recompute a record's metrics from its stored images (exit 1 on any difference)"),
}


def _parse(command: str, argv: list[str]) -> JobSettings:
    """A subcommand's settings; exits 2 (with its usage) on bad input or a missing positional record."""
    settings_cls, help_line = SUBCOMMANDS[command]
    prog = f"{PROG} {command}"
    settings = parse_settings(settings_cls, argv, prog=prog, description=help_line)
    missing = (
        "RUNS: give at least one result.json file or run directory"
        if isinstance(settings, RenderSettings) and not settings.runs
        else "RECORD: give a result.json file or a run directory"
        if isinstance(settings, VerifySettings) and settings.record is None
        else None
    )
    if missing:
        settings_parser(settings_cls, prog=prog, description=help_line)[0].error(missing)
    return settings


def _top_parser() -> argparse.ArgumentParser:
    """`--help` and `--version` of the command itself, listing the subcommands (each has its own `--help`)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"laion-sg {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{render,verify}", required=True)
    for name, (_, help_line) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_line, add_help=False)
    return parser


def _render(settings: RenderSettings) -> int:
    try:
        entries = load_entries(settings.runs, skip_invalid=settings.skip_invalid)
    except RecordError as exc:
        print(f"leaderboard: error: {exc}", file=sys.stderr)
        return 2
    if not entries:
        print("leaderboard: error: no valid result record to render", file=sys.stderr)
        return 2
    out = settings.output
    out.mkdir(parents=True, exist_ok=True)
    entries = [with_grid(entry, out, settings.grid_images) for entry in entries]
    (out / "leaderboard.md").write_text(render_markdown(entries, base=out), encoding="utf-8")
    (out / "index.html").write_text(render_html(entries, base=out), encoding="utf-8")
    print(f"rendered {len(entries)} records to {out / 'leaderboard.md'} and {out / 'index.html'}")
    return 0


def _verify(settings: VerifySettings) -> int:
    assert settings.record is not None  # `_parse` refuses settings without one
    try:
        problems = verify_record(
            settings.record,
            settings.run_dir,
            num_actors=settings.num_actors,
            rel_tol=settings.rel_tol,
            abs_tol=settings.abs_tol,
        )
    except RecordError as exc:
        print(f"leaderboard: error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"MISMATCH {problem}", file=sys.stderr)
    print("verify: " + ("FAILED" if problems else "ok, every metric reproduced"))
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in SUBCOMMANDS:
        parser = _top_parser()
        parser.parse_args(args)  # --help, --version, or an error naming the subcommands: all exit
        parser.error("the subcommand (render or verify) comes first")  # e.g. after a stray "--"
    settings = _parse(args[0], args[1:])
    if isinstance(settings, RenderSettings):
        return _render(settings)
    assert isinstance(settings, VerifySettings)
    return _verify(settings)
