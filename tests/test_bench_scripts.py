"""Smoke runs of the README's performance scripts (bench/, except train_step: `test_bench_train_step.py`) at the
smallest sizes whose timings still print as non-zero: each exits 0 and prints every figure, finite and positive,
and every ratio it prints agrees with the figures it prints beside it (recomputed here; printed values are
rounded, so the check is on intervals: a printed ``0.123`` stands for [0.1225, 0.1235]).
"""

from __future__ import annotations

import math
import re
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import annotate_overhead  # noqa: E402
import frechet  # noqa: E402
import http_engine  # noqa: E402
import metrics_throughput  # noqa: E402

NUMBER = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"


def interval(text: str) -> tuple[float, float]:
    """The values a printed number stands for: ± half a unit of its last digit."""
    half = 0.5 * 10.0 ** Decimal(text).as_tuple().exponent
    return float(text) - half, float(text) + half


def quotient(numerator: tuple[float, float], denominator: tuple[float, float]) -> tuple[float, float]:
    """The interval of a / b for positive intervals a and b (an upper bound of inf when b may be 0)."""
    low = numerator[0] / denominator[1]
    high = numerator[1] / denominator[0] if denominator[0] > 0 else math.inf
    return low, high


def assert_consistent(printed: str, computed: tuple[float, float], what: str) -> None:
    low, high = interval(printed)
    assert low <= computed[1] and computed[0] <= high, f"{what}: printed {printed}, figures give {computed}"


def assert_positive(*texts: str) -> None:
    for text in texts:
        assert math.isfinite(float(text)) and float(text) > 0, texts


def test_frechet_timings_ratios_and_values(capsys) -> None:
    """d=256 from 300 samples: six methods, each timed once, the "× ours" column is its time over the first
    row's, and every FID value is the one numpy gives from the eigenvalues of Σ1Σ2 of the same statistics."""
    assert frechet.main(["--dim", "256", "--samples", "300", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Fréchet distance, d=256, covariances of 300 samples")
    assert out.rstrip().endswith("values agree within 1e-6")
    rows = re.findall(rf"^(\S.*?)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})$", out, re.MULTILINE)
    assert [r[0] for r in rows] == [
        "ours: Cholesky(Σ1) + eigvalsh",
        "ours, Σ1 factor cached",
        "symmetric: eigh √Σ1, eigvalsh",
        "eigvals(Σ1Σ2) torch (torchmetrics)",
        "eigvals(Σ1Σ2) numpy (torch-fidelity)",
        "scipy sqrtm (pytorch-fid, clean-fid)",
    ]
    ours_seconds, ours_fid = rows[0][1], rows[0][3]
    assert rows[0][2] == "1.00" and float(rows[0][4]) == 0.0
    mu1, s1, mu2, s2 = frechet._statistics(256, 300)
    diff = mu1 - mu2
    expected = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()
    for name, seconds, ratio, fid, rel in rows:
        assert_positive(seconds, ratio, fid)
        assert_consistent(ratio, quotient(interval(seconds), interval(ours_seconds)), f"{name} × ours")
        assert float(fid) == pytest.approx(expected, rel=1e-6), name
        # |value - ours| / ours from the printed values, within their rounding (1e-6 each)
        recomputed = abs(float(fid) - float(ours_fid)) / float(ours_fid)
        assert recomputed <= float(rel) * 1.05 + 2e-6 / float(ours_fid) and float(rel) <= 1e-6, name


def test_metrics_throughput_rates(capsys) -> None:
    """One image (the untimed warm-up batch plus one timed batch per method): three positive rates; the clean
    resize alone is faster than the clean resize followed by the network."""
    argv = ["--images", "1", "--size", "32", "--batch-size", "1", "--rounds", "1"]
    assert metrics_throughput.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("Inception feature extraction, 1 images 32x32, batch 1, ")
    rates = dict(re.findall(rf"^(\S.*?)\s+({NUMBER}) images/s$", out, re.MULTILINE))
    assert list(rates) == [
        "ours: clean resize + network",
        "ours: clean resize only (CPU threads)",
        "torchmetrics FID.update (bilinear-aa)",
    ]
    assert_positive(*rates.values())
    assert float(rates["ours: clean resize only (CPU threads)"]) > float(rates["ours: clean resize + network"])


def test_annotate_overhead_rates_and_ratios(ray_local, capsys) -> None:
    """16 JPEGs of 64x48 in 2 shards through the whole annotate job (on the session's Ray) and the plain PIL loop:
    the end-to-end rate is the images over the wall time, the steady rate the images over the time after the
    first result, and each ratio is that rate over the plain loop's."""
    argv = ["--images", "16", "--width", "64", "--height", "48", "--files-per-shard", "8", "--batch-size", "8"]
    assert annotate_overhead.main(argv) == 0
    out = capsys.readouterr().out
    assert ray_local.is_initialized()  # the script used the session's Ray and left it running
    head = re.search(r"^images: (\d+) JPEG 64x48, Ray CPUs: (\d+)$", out, re.MULTILINE)
    assert head and head.group(1) == "16" and int(head.group(2)) > 0, out
    times = re.search(rf"; pipeline wall ({NUMBER}) s, of which ({NUMBER}) s until the first result$", out, re.MULTILINE)
    plain = re.search(rf"^plain PIL decode\+resize loop:\s+({NUMBER}) images/s$", out, re.MULTILINE)
    end_to_end = re.search(rf"^annotation pipeline, end to end:\s+({NUMBER}) images/s  ratio ({NUMBER})$", out, re.MULTILINE)
    steady = re.search(
        rf"^annotation pipeline, after first result:\s+({NUMBER}) images/s  ratio ({NUMBER})$", out, re.MULTILINE
    )
    assert times and plain and end_to_end and steady, out
    wall, first = times.groups()
    assert_positive(wall, first, plain.group(1), *end_to_end.groups(), *steady.groups())
    images = (16.0, 16.0)
    assert_consistent(end_to_end.group(1), quotient(images, interval(wall)), "end-to-end images/s")
    after_first = (interval(wall)[0] - interval(first)[1], interval(wall)[1] - interval(first)[0])
    assert_consistent(steady.group(1), quotient(images, after_first), "steady images/s")
    for rate, ratio in (end_to_end.groups(), steady.groups()):
        assert_consistent(ratio, quotient(interval(rate), interval(plain.group(1))), f"ratio of {rate} images/s")


def test_http_engine_rates_and_ratios(ray_local, capsys) -> None:
    """24 captions through the real text_to_graph job with the openai engine, against the script's 50 ms server
    at 4 requests in flight (on the session's Ray): the end-to-end rate is the rows over the wall time, the steady
    rate the rows over the server's window, the ideal C / latency, the ratio steady over ideal, and the server never
    held more requests than the bound."""
    assert http_engine.main(["--concurrency", "4", "--rows", "24", "--latency", "0.05"]) == 0
    out = capsys.readouterr().out
    assert ray_local.is_initialized()
    assert out.startswith("openai engine, text_to_graph, server latency 50 ms, 1 HTTP worker, batch size 8")
    row = re.search(
        rf"^\s+4\s+24\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+(\d+)$",
        out,
        re.MULTILINE,
    )
    assert row, out
    wall, end_to_end, window, steady, ideal, ratio, peak = row.groups()
    assert_positive(wall, end_to_end, window, steady, ideal, ratio)
    rows = (24.0, 24.0)
    assert_consistent(end_to_end, quotient(rows, interval(wall)), "end-to-end rows/s")
    assert_consistent(steady, quotient(rows, interval(window)), "steady rows/s")
    assert_consistent(ideal, quotient((4.0, 4.0), (0.05, 0.05)), "ideal rows/s")
    assert_consistent(ratio, quotient(interval(steady), interval(ideal)), "ratio")
    assert 1 <= int(peak) <= 4


def test_scale_annotate_watches_peak_memory_of_the_job_and_its_ray_workers() -> None:
    """bench/scale_annotate.py's process-tree watcher: a child that holds 200 MB shows a driver peak of at least
    that, and its own child titled like a Ray worker is counted as one; a finished process reads 0."""
    import subprocess

    import scale_annotate

    script = (
        "import subprocess, sys, time\n"
        "worker = subprocess.Popen(['bash', '-c', 'exec -a ray::MapWorker sleep 3'])\n"
        "block = bytearray(200 * 2**20)\n"
        "time.sleep(2)\n"
        "worker.wait()\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    with scale_annotate._TreeWatcher(process.pid, interval=0.05) as watcher:
        process.wait(timeout=60)
    assert watcher.driver_peak >= 200 * 2**20 and watcher.driver_private_peak >= 200 * 2**20
    assert len(watcher.worker_peaks) == 1 and 0 < max(watcher.worker_peaks.values()) < 50 * 2**20
    assert scale_annotate._memory(process.pid) == 0
