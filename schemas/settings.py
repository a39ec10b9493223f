"""One way to configure every job: a typed settings model becomes the job's command line.

A job declares its settings as a pydantic model (`JobSettings`); `parse_settings` turns it into
- one `--flag` per field (`max_steps` -> `--max-steps`; nested models -> `--judge.model`; booleans -> `--x/--no-x`;
  lists -> `--tasks a,b` or the flag repeated), each with its help line and its default shown in `--help`;
- `--config FILE.yaml` with any of the same settings, nested the same way (flags win over the file);
- `--version`.
The flag parsing itself is pydantic-settings' `CliSettingsSource`; this module adds the YAML layer, the error
messages that name the flag or the file, and the rule that every setting documents itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic.fields import FieldInfo

__all__ = ["JobSettings", "SettingsError", "package_version", "parse_settings", "settings_parser"]

S = TypeVar("S", bound="JobSettings")


class SettingsError(ValueError):
    """A job's settings cannot be read or are invalid; the message names the flag or the file."""


class JobSettings(BaseModel):
    """Base of every job's settings: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_record(self) -> dict[str, Any]:
        """JSON-ready settings for a run's provenance."""
        return self.model_dump(mode="json")


def package_version() -> str:
    try:
        return version("laion-sg")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _flag(loc: Sequence[Any]) -> str:
    return "--" + ".".join(str(part).replace("_", "-") for part in loc if not isinstance(part, int))


def _group_fields(annotation: Any) -> dict[str, FieldInfo] | None:
    """The fields of a nested settings group (a pydantic model or a pydantic dataclass: dotted flags), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.model_fields
    return annotation.__pydantic_fields__ if is_pydantic_dataclass(annotation) else None


def _check_documented(owner: str, fields: Mapping[str, FieldInfo], prefix: str = "") -> None:
    """Every setting has a help line (a `Field(description=...)`); raised at parse time so that tests catch it."""
    for name, info in fields.items():
        if not info.description:
            raise TypeError(f"{owner}.{prefix}{name} has no description (its --help line)")
        if (group := _group_fields(info.annotation)) is not None:
            _check_documented(owner, group, prefix=f"{prefix}{name}.")


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_config(path: str) -> dict[str, Any]:
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read the config {path}: {exc}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    return values


def _describe(exc: ValidationError, config_path: str | None) -> str:
    where = f" (command line or {config_path})" if config_path else ""
    lines = []
    for error in exc.errors():
        flag = _flag(error["loc"])
        if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):  # a model's, a dataclass's
            key = ".".join(str(part) for part in error["loc"])
            lines.append(f"unknown setting {key!r}{f' in {config_path}' if config_path else ''}")
        elif error["type"] == "missing" and not any(isinstance(part, int) for part in error["loc"]):
            lines.append(f"{flag} is required{where}")
        elif items := [part for part in error["loc"] if isinstance(part, int)]:  # an item of a list or tuple
            lines.append(f"{flag}: item {items[-1] + 1}: {error['msg']}")
        else:
            lines.append(f"{flag}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(lines)


def settings_parser(
    settings_cls: type[JobSettings], *, prog: str, description: str
) -> tuple[argparse.ArgumentParser, Any]:
    """The job's argparse parser (for `--help`) and the pydantic-settings source that fills it."""
    from pydantic_settings import CliSettingsSource

    _check_documented(settings_cls.__name__, settings_cls.model_fields)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="YAML file with any of the settings below; flags win"
    )
    parser.add_argument("--version", action="version", version=f"laion-sg {package_version()}")
    source = CliSettingsSource(
        settings_cls,  # type: ignore[arg-type]  # a plain BaseModel: no environment variables are read
        root_parser=parser,
        cli_prog_name=prog,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_avoid_json=True,
        cli_hide_none_type=True,
        cli_enforce_required=False,  # a required setting may come from --config; checked after the merge
        cli_use_class_docs_for_groups=False,
    )
    return parser, source


def parse_settings(
    settings_cls: type[S], argv: Sequence[str] | None = None, *, prog: str, description: str
) -> S:
    """Settings from defaults < `--config` YAML < flags. Bad input exits 2 with a message naming the flag or file."""
    import sys

    parser, source = settings_parser(settings_cls, prog=prog, description=description)
    args = list(sys.argv[1:] if argv is None else argv)
    config_path = parser.parse_known_args(args)[0].config
    try:
        file_values = _read_config(config_path) if config_path else {}
        flag_values = source(args=args)()
        return settings_cls.model_validate(_deep_merge(file_values, flag_values))
    except SettingsError as exc:
        parser.error(str(exc))
    except ValidationError as exc:
        parser.error(_describe(exc, config_path))
    raise AssertionError("unreachable")  # parser.error exits
