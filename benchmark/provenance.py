"""Provenance of a benchmark record: package versions, hardware, git commit, weight hashes, wall time, config."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from schemas import Provenance

__all__ = ["PACKAGES", "git_commit", "hardware", "package_versions", "provenance", "weights_sha256"]

PACKAGES = (
    "laion-sg",
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "open_clip_torch",
    "xgrammar",
    "ray",
    "numpy",
    "pyarrow",
    "pillow",
    "safetensors",
)
_REPO = Path(__file__).resolve().parent.parent


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the numbers, plus ``python`` and ``git`` (when known)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if commit := git_commit():
        versions["git"] = commit
    return versions


def git_commit(repo: Path = _REPO) -> str | None:
    """The checked-out commit of the source tree (``-dirty`` appended when it has local changes), or None."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def hardware() -> dict[str, Any]:
    """Platform, CPU, and the accelerators torch sees."""
    import os

    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
    return info


def _sha256_file(path: Path, digest: Any) -> None:
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def weights_sha256(model: str | Path | None) -> str | None:
    """sha256 of a local weights file, or of a local model directory (every non-hidden file, by relative path
    and content, in path order); None for a hub id or nothing."""
    if model is None:
        return None
    path = Path(model)
    digest = hashlib.sha256()
    if path.is_file():
        _sha256_file(path, digest)
        return digest.hexdigest()
    if not path.is_dir():
        return None
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(relative.as_posix().encode() + b"\0")
        _sha256_file(file, digest)
        digest.update(b"\0")
    return digest.hexdigest()


def provenance(config: dict[str, Any], wall_time_s: float) -> Provenance:
    """The provenance part of a result record for a run that took `wall_time_s` seconds."""
    packages = package_versions()
    return Provenance(
        package_version=packages.get("laion-sg", "unknown"),
        packages=packages,
        hardware=hardware(),
        wall_time_s=wall_time_s,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=config,
    )
