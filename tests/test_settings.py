"""The shared settings layer: flags, `--config` YAML, `--help` and `--version` from one typed model."""

from __future__ import annotations

import importlib
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic.dataclasses import is_pydantic_dataclass

from schemas.settings import JobSettings, parse_settings


class Judge(BaseModel):
    """The judge's settings (a class docstring: the help shows the field's description instead)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="judge model id or local dir")
    max_new_tokens: int = Field(512, description="token bound of each answer")


class Example(JobSettings):
    input: str = Field(description="input directory")
    max_steps: int = Field(10, description="optimizer steps")
    learning_rate: float = Field(1e-4, description="peak learning rate")
    flip: bool = Field(False, description="random horizontal flips")
    tasks: list[str] = Field(["scene_graph"], description="tasks to run")
    engine: Literal["hf", "vllm", "openai"] = Field("hf", description="annotation engine")
    limit: int | None = Field(None, description="rows to read at most")
    judge: Judge = Field(Judge(), description="the judge model")


def parse(argv: list[str]) -> Example:
    return parse_settings(Example, argv, prog="example", description="an example job")


def test_flags_override_the_yaml_file_which_overrides_defaults(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "input: from-file\nmax_steps: 7\nlearning_rate: 0.5\njudge:\n  model: file-judge\n  max_new_tokens: 9\n"
    )
    settings = parse(["--config", str(config), "--max-steps", "3", "--judge.model", "flag-judge", "--flip"])
    assert settings == Example(
        input="from-file",
        max_steps=3,  # the flag wins over the file
        learning_rate=0.5,  # the file wins over the default
        flip=True,
        judge=Judge(model="flag-judge", max_new_tokens=9),  # nested keys merge one by one
    )
    assert parse(["--input", "x"]) == Example(input="x")  # defaults only


def test_lists_booleans_literals_and_optional_values() -> None:
    settings = parse(["--input", "x", "--tasks", "a,b", "--tasks", "c", "--engine", "openai", "--limit", "4"])
    assert (settings.tasks, settings.engine, settings.limit) == (["a", "b", "c"], "openai", 4)
    assert parse(["--input", "x", "--flip", "--no-flip"]).flip is False


@pytest.mark.parametrize(
    ("argv", "yaml_text", "message"),
    [
        (["--input", "x", "--max-steps", "many"], None, r"--max-steps: .*integer.*'many'"),
        (
            ["--input", "x", "--engine", "tgi"],
            None,
            r"--engine: Input should be 'hf', 'vllm' or 'openai' \(got 'tgi'\)",
        ),
        (["--max-steps", "2"], None, r"--input is required"),
        (["--input", "x", "--unknown", "1"], None, r"unrecognized arguments: --unknown"),
        ([], "input: x\nmax_stepz: 3\n", r"unknown setting 'max_stepz' in .*run.yaml"),
        ([], "input: x\njudge:\n  modle: y\n", r"unknown setting 'judge.modle'"),
        (["--input", "x", "--judge", '{"modle": "y"}'], None, r"error: unknown setting 'judge.modle'\n$"),
        ([], "- a list\n", r"expected a mapping of settings"),
        ([], "input: [unclosed\n", r"cannot read the config"),
        (["--judge.max-new-tokens", "-"], "input: x\n", r"--judge.max-new-tokens: .*integer"),
    ],
)
def test_bad_settings_exit_2_naming_the_flag_or_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], yaml_text: str | None, message: str
) -> None:
    if yaml_text is not None:
        (tmp_path / "run.yaml").write_text(yaml_text)
        argv = ["--config", str(tmp_path / "run.yaml"), *argv]
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    assert re.search(message, capsys.readouterr().err), message


def test_help_lists_every_setting_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for flag, help_line, default in [
        ("--max-steps", "optimizer steps", "(default: 10)"),
        ("--learning-rate", "peak learning rate", "(default: 0.0001)"),
        ("--flip, --no-flip", "random horizontal flips", "(default: False)"),
        ("--tasks", "tasks to run", "(default: ['scene_graph'])"),
        ("--judge.model", "judge model id or local dir", "(default: Qwen/Qwen2.5-VL-7B-Instruct)"),
        ("--judge.max-new-tokens", "token bound of each answer", "(default: 512)"),
        ("--input", "input directory", "(required)"),
        ("--config", "YAML file", ""),
    ]:
        assert re.search(
            re.escape(flag) + r" \S*\s*" + re.escape(help_line) + r"[^-]*" + re.escape(default), text
        ), flag
    assert "[--limit int]" in text  # an optional value shows its type, not "{int,null}"
    assert "judge options: the judge model --judge.model" in text and "class docstring" not in text


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"laion-sg {version('laion-sg')}"


def test_a_setting_without_a_help_line_is_a_programming_error() -> None:
    class Undocumented(JobSettings):
        steps: int = 3

    with pytest.raises(TypeError, match=r"Undocumented.steps has no description"):
        parse_settings(Undocumented, [], prog="x", description="x")

    @pydantic_dataclass(frozen=True)
    class Bounds:  # a group that is a validated dataclass, as `schemas.Limits`
        low: int = Field(0, description="documented")
        high: int = 9

    class UndocumentedGroup(JobSettings):
        bounds: Bounds = Field(default_factory=Bounds, description="the bounds")

    with pytest.raises(TypeError, match=r"UndocumentedGroup.bounds.high has no description"):
        parse_settings(UndocumentedGroup, [], prog="x", description="x")


def test_settings_record_is_json_ready() -> None:
    record = parse(["--input", "x"]).to_record()
    assert record["judge"] == {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "max_new_tokens": 512}
    assert record["limit"] is None


# Every job configured through this layer: (module, its settings class name, settings that are not the defaults).
JOB_SETTINGS = {
    "benchmark.run": (
        "BenchRunSettings",
        {
            "input": "bench.parquet",
            "adapter": "diffusers-sg-text",
            "model": "stabilityai/stable-diffusion-xl-base-1.0",
            "output": "runs/a",
            "num_actors": 4,
            "display_name": "SDXL (baseline)",
            "generation": {"steps": 20, "guidance": 7.5, "height": 512, "scheduler": "EulerDiscreteScheduler"},
            "judge": {
                "model": "judge-dir",
                "limits": {"max_objects": 5},
                "dtype": "bfloat16",
                "synonyms": "synonyms.yaml",
            },
            "clip": {"model": "ViT-B-16", "pretrained": "laion2b_s34b_b88k", "text": "sg_text"},
            "inception": {"weights": "pt_inception.pth", "allow_download": True},
            "kid": {"subsets": 10, "subset_size": 50},
            "features": {"batch_size": 8},
            "questions": {"enabled": False, "max_new_tokens": 8},
        },
    ),
    "benchmark.dataset": (
        "BenchSetSettings",
        {"input": "exported", "output": "bench.parquet", "split": "validation", "min_relations": 3, "subset": 9},
    ),
    "pipelines.annotate": (
        "AnnotateSettings",
        {
            "input": "images",
            "output": "annotated",
            "model": "Qwen/Qwen2.5-VL-7B-Instruct",
            "task": "spatial_caption",
            "filters": {"min_aesthetic_score": 6.5, "max_punsafe": 0.5},
            "limits": {"max_relations": 20},
            "engine_options": {"batch_size": 4, "base_url": "http://127.0.0.1:8000/v1", "qps": 5},
        },
    ),
    "pipelines.export": (
        "ExportSettings",
        {"input": "annotated", "output": "dataset", "split_proportions": [6, 2, 2], "include_failed": True},
    ),
    "training.train": (
        "TrainSettings",
        {
            "input": "dataset",
            "model": "sdxl",
            "output": "runs",
            "cache": "cache",
            "max_steps": 20,
            "use_gpu": True,
            "lr": 0.001,
            "crop": "none",
            "max_bad_fraction": 0.1,
            "encoder": {"hidden_dim": 16, "pooling": "sum"},
        },
    ),
    "training.precompute": (
        "PrecomputeSettings",
        {
            "input": "dataset",
            "model": "sdxl",
            "output": "cache",
            "resolution": 64,
            "dtype": "float32",
            "num_actors": 2,
            "use_gpu": True,
        },
    ),
    "training.sg_encoder": ("SGEncoderSettings", {"count_params": True}),
    "training.lora": (
        "LoraSettings",
        {"input": "dataset_spatial", "model": "sdxl", "output": "runs/lora", "max_steps": 20, "rank": 4, "flip": "off"},
    ),
    "training.pretrain_sg": (
        "PretrainSettings",
        {"input": "dataset", "model": "sdxl", "output": "runs/pre", "max_steps": 20, "encoder": {"hidden_dim": 16}},
    ),
    "benchmark.spatial.run": (
        "SpatialRunSettings",
        {
            "input": "sr2d.parquet",
            "adapter": "sdxl-sg",
            "model": "runs/final",
            "output": "runs/spatial",
            "generation": {"steps": 20, "images_per_sample": 2},
            "detector": {"model": "owlvit", "threshold": 0.2},
        },
    ),
    "benchmark.spatial.prompts": ("SpatialPromptSettings", {"output": "sr2d.parquet", "max_prompts": 5, "seed": 1}),
    "benchmark.long_prompts": ("LongPromptsSettings", {"input": "paraprompts.csv", "output": "captions.parquet"}),
}
JOBS = [(module, name) for module, (name, _) in JOB_SETTINGS.items()]


def _flags(model: Any, prefix: str = "--") -> list[str]:
    """The flags of a settings model; a nested model or pydantic dataclass (`schemas.Limits`) gives dotted flags."""
    flags = []
    fields = model.__pydantic_fields__ if is_pydantic_dataclass(model) else model.model_fields
    for name, info in fields.items():
        flag = prefix + name.replace("_", "-")
        annotation = info.annotation
        if is_pydantic_dataclass(annotation) or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            flags += _flags(annotation, flag + ".")
        else:
            flags.append(flag)
    return flags


@pytest.mark.parametrize(("module", "settings_name"), JOBS)
def test_every_job_help_shows_each_flag_with_a_default(
    module: str, settings_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job = importlib.import_module(module)
    with pytest.raises(SystemExit) as exited:
        job.main(["--help"])
    assert exited.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert " ".join(" ".join(lines).split()).startswith(f"usage: python -m {module} ")
    described: dict[str, str] = {}  # flag -> its help entry: a line "  --flag ..." and the more indented ones after
    for line in lines:
        if entry := re.match(r"^  (--[a-z][\w.-]*)", line):
            flag, described[entry.group(1)] = entry.group(1), line
        elif line.startswith("   ") and described:
            described[flag] += " " + line.strip()
    flags = _flags(getattr(job, settings_name))
    assert set(described) == {"--config", "--version", *flags}  # every setting has a flag, and no flag is extra
    for flag in flags:
        assert re.search(r"\((default: .*|required)\)$", " ".join(described[flag].split())), described[flag]


def _as_flags(values: dict, prefix: str = "--") -> list[str]:
    argv: list[str] = []
    for name, value in values.items():
        flag = prefix + name.replace("_", "-")
        if isinstance(value, dict):
            argv += _as_flags(value, flag + ".")
        elif isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag.removeprefix("--"))  # --no-questions.enabled
        elif isinstance(value, list):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    return argv


@pytest.mark.parametrize("module", sorted(JOB_SETTINGS))
def test_every_job_reads_a_config_file_like_its_flags(module: str, tmp_path: Path) -> None:
    import yaml

    settings_name, values = JOB_SETTINGS[module]
    settings_cls = getattr(importlib.import_module(module), settings_name)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(values))
    from_file = parse_settings(settings_cls, ["--config", str(tmp_path / "job.yaml")], prog=module, description="")
    from_flags = parse_settings(settings_cls, _as_flags(values), prog=module, description="")
    assert from_file == from_flags
    required = {name for name, field in settings_cls.model_fields.items() if field.is_required()}
    defaults = settings_cls.model_validate({name: values[name] for name in required})
    changed = {name for name in settings_cls.model_fields if getattr(from_file, name) != getattr(defaults, name)}
    assert changed == set(values) - required  # every value given was read, from the file as from flags


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Bounds:  # a settings group that is a validated dataclass, as `schemas.Limits`
    low: int = Field(0, description="lowest value")
    high: int = Field(9, description="highest value")


class WithBounds(JobSettings):
    output: Path = Field(Path("out"), description="output directory")
    bounds: Bounds = Field(default_factory=Bounds, description="the bounds")


@pytest.mark.parametrize(
    ("argv", "yaml_text", "message"),
    [
        (["--max-steps", "2"], None, "--input is required"),
        ([], "max_steps: 3\n", "--input is required (command line or CONFIG)"),
        (
            [],
            "input: x\ntasks: [a, [b]]\nmax_stepz: 1\n",
            "--tasks: item 2: Input should be a valid string; unknown setting 'max_stepz' in CONFIG",
        ),
        ([], "- a list\n", "CONFIG: expected a mapping of settings, got list"),
        (
            ["--input", "x", "--max-steps", "many", "--engine", "tgi"],
            None,
            "--max-steps: Input should be a valid integer, unable to parse string as an integer (got 'many'); "
            "--engine: Input should be 'hf', 'vllm' or 'openai' (got 'tgi')",
        ),
    ],
)
def test_bad_settings_give_one_whole_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], yaml_text: str | None, message: str
) -> None:
    """The exact error line: each problem names its flag (item numbers count from 1), says where it came from
    when a `--config` file was read, and problems are joined with "; "."""
    config = tmp_path / "run.yaml"
    if yaml_text is not None:
        config.write_text(yaml_text)
        argv = ["--config", str(config), *argv]
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "example: error: " + message.replace("CONFIG", str(config))


def test_an_unknown_key_of_a_dataclass_group_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("bounds: {low: 1, hgih: 2}\n")
    with pytest.raises(SystemExit):
        parse_settings(WithBounds, ["--config", str(config)], prog="x", description="d")
    assert capsys.readouterr().err.splitlines()[-1] == f"x: error: unknown setting 'bounds.hgih' in {config}"


def test_record_values_are_json_types_and_help_shows_description_and_metavar(
    capsys: pytest.CaptureFixture[str],
) -> None:
    record = parse_settings(WithBounds, ["--output", "o", "--bounds.low", "2"], prog="x", description="d").to_record()
    assert record == {"output": "o", "bounds": {"low": 2, "high": 9}}  # a Path becomes its string
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = capsys.readouterr().out
    assert "\nan example job\n" in text and "--config FILE.yaml" in text


def test_version_of_an_uninstalled_source_tree_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import PackageNotFoundError

    from schemas import settings

    def missing(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(settings, "version", missing)
    assert settings.package_version() == "unknown"


def test_without_argv_the_command_line_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """`parse_settings(cls, None)` reads sys.argv after the program name, as a job's main() does."""
    monkeypatch.setattr("sys.argv", ["example", "--input", "from-argv", "--max-steps", "3"])
    settings = parse_settings(Example, None, prog="example", description="an example job")
    assert (settings.input, settings.max_steps) == ("from-argv", 3)
