"""A real Ray cluster on 127.0.0.1 for `ray job submit` tests: `ray start --head`, then jobs through the job API."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def repo_env() -> dict[str, str]:
    """This environment without RAY_ADDRESS, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@dataclass(frozen=True)
class LocalCluster:
    address: str
    env: dict[str, str]

    def submit(self, module: str, argv: list[str], cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir REPO -- python -m module argv`, waiting for the job to finish."""
        return subprocess.run(
            [RAY, "job", "submit", "--address", self.address, "--working-dir", str(REPO), "--",
             sys.executable, "-m", module, *argv],
            cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


@contextmanager
def local_ray_cluster(cwd: Path, num_cpus: int = 2) -> Iterator[LocalCluster]:
    """Start a head node bound to 127.0.0.1 on free ports; stop it on exit."""
    gcs, dashboard, client, node_manager, object_manager, agent, metrics = _free_ports(7)
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # Ray 2.60 clusters require a token; the head and the `ray job` client share this one.
    env = repo_env() | {
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
         f"--ray-client-server-port={client}", f"--node-manager-port={node_manager}",
         f"--object-manager-port={object_manager}", f"--dashboard-agent-listen-port={agent}",
         f"--metrics-export-port={metrics}"],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # up, and asking for Ray's auth token (the CLI sends it)
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
                time.sleep(0.5)
        yield LocalCluster(address, env)
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
