"""The `laion-sg` console script dispatches to every job's `main()`."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from laion_sg.cli import JOBS, main


def test_usage_lists_every_command(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in [*JOBS, "make-tiny-models"]:
        assert command in out
    assert main(["--help"]) == 0


@pytest.mark.parametrize("command", sorted(JOBS))
def test_every_job_module_has_a_main(command):
    module = importlib.import_module(JOBS[command][0])
    assert callable(module.main)


def test_make_tiny_models_layout(tiny_models_dir):
    assert (tiny_models_dir / "qwen2_5_vl" / "config.json").is_file()
    assert (tiny_models_dir / "sdxl" / "model_index.json").is_file()
    assert (tiny_models_dir / "open_clip" / "open_clip_config.json").is_file()
    assert (tiny_models_dir / "inception" / "pt_inception-random.pth").is_file()
    assert (tiny_models_dir / "owlv2" / "processor_config.json").is_file()


def test_console_script_forwards_arguments():
    result = subprocess.run([sys.executable, "-m", "laion_sg.cli", "export", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--input" in result.stdout
