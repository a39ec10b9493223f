"""Image metrics against independent references: scipy `sqrtm`, torchmetrics, torch-fidelity, hand computations."""

from __future__ import annotations

import importlib
import inspect
import math
import pickle
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import scipy.linalg as scipy_linalg
import torch
import torch_fidelity.metric_fid as tf_fid
import torch_fidelity.metric_kid as tf_kid
import torchmetrics.image.fid as tm_fid
from PIL import Image

from benchmark.metrics import (
    CMMD,
    FID,
    KID,
    CLIPEmbedder,
    CLIPImageScore,
    CLIPScore,
    InceptionFeatureExtractor,
    Precomputed,
    clip_t_scores,
    cmmd,
    covariance_factor,
    feature_stats,
    frechet_distance,
    kernel_inception_distance,
    load_inception,
    sample_factor,
)
from benchmark.metrics.inception import clean_resize, resolve_inception_weights
from benchmark.metrics.validation import require_finite

# The package exports functions named like their modules (`cmmd`), so fetch the modules themselves.
cmmd_module = importlib.import_module("benchmark.metrics.cmmd")
fid_module = importlib.import_module("benchmark.metrics.fid")


def _gaussian_samples(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    mixing = rng.standard_normal((d, d)) / math.sqrt(d) + np.eye(d)
    return rng.standard_normal((n, d)) @ mixing + rng.standard_normal(d)


def _fid_scipy_sqrtm(mu1, sigma1, mu2, sigma2) -> float:
    """pytorch-fid / clean-fid: trace of scipy's sqrtm(Σ1Σ2), real part."""
    covmean = scipy_linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real)


def _fid_references(mu1, sigma1, mu2, sigma2) -> dict[str, float]:
    t = [torch.from_numpy(a) for a in (mu1, sigma1, mu2, sigma2)]
    fidelity = tf_fid.fid_statistics_to_metric(
        {"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, False
    )
    return {
        "scipy_sqrtm": _fid_scipy_sqrtm(mu1, sigma1, mu2, sigma2),
        "torchmetrics": float(tm_fid._compute_fid(*t)),
        "torch_fidelity": fidelity[tf_fid.KEY_METRIC_FID],
    }


def test_frechet_matches_references_well_conditioned() -> None:
    rng = np.random.default_rng(0)
    mu1, sigma1 = feature_stats(_gaussian_samples(rng, 600, 64))
    mu2, sigma2 = feature_stats(_gaussian_samples(rng, 500, 64))
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    for name, reference in _fid_references(mu1, sigma1, mu2, sigma2).items():
        assert ours == pytest.approx(reference, rel=1e-6), name
    # The eigen-factor path (taken when Cholesky fails) and a cached factor give the same value.
    eigen_factor = np.linalg.eigh(sigma1)[1] * np.sqrt(np.linalg.eigh(sigma1)[0])
    assert frechet_distance(mu1, sigma1, mu2, sigma2, factor1=eigen_factor) == pytest.approx(ours, rel=1e-10)
    assert frechet_distance(mu1, sigma1, mu2, sigma2, covariance_factor(sigma1)) == ours
    assert frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(ours, rel=1e-10)


def test_frechet_rank_deficient_is_finite_and_nonnegative() -> None:
    rng = np.random.default_rng(1)
    x, y = _gaussian_samples(rng, 100, 256), _gaussian_samples(rng, 100, 256)
    mu1, sigma1 = feature_stats(x)
    mu2, sigma2 = feature_stats(y)
    with np.errstate(all="ignore"):
        assert np.iscomplexobj(scipy_linalg.sqrtm(sigma1 @ sigma2))  # where the sqrtm method goes complex
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert math.isfinite(ours) and ours > 0
    assert ours == pytest.approx(_fid_references(mu1, sigma1, mu2, sigma2)["torchmetrics"], rel=1e-6)
    same = frechet_distance(mu1, sigma1, mu1, sigma1)
    assert 0.0 <= same < 1e-9 * np.trace(sigma1)
    # The centred data is an exact (d×n) factor: the same value from a 100×100 instead of a 256×256 eigenproblem
    # (more exact, even: no noise eigenvalues of the 156 null directions enter the trace).
    factor = sample_factor(x)
    assert frechet_distance(mu1, sigma1, mu2, sigma2, factor1=factor) == pytest.approx(ours, rel=1e-7)
    assert 0.0 <= frechet_distance(mu1, sigma1, mu1, sigma1, factor1=factor) < 1e-9 * np.trace(sigma1)


def _torch_fidelity_kid(first: np.ndarray, second: np.ndarray, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """torch-fidelity's KID of (input1, input2) features: its own subsampling and kernel, float64."""
    reference = tf_kid.kid_features_to_metric(
        torch.from_numpy(np.asarray(first)).double(),
        torch.from_numpy(np.asarray(second)).double(),
        kid_subsets=subsets,
        kid_subset_size=subset_size,
        rng_seed=seed,
        verbose=False,
    )
    return reference[tf_kid.KEY_METRIC_KID_MEAN], reference[tf_kid.KEY_METRIC_KID_STD]


@pytest.mark.parametrize("full_gram", [True, False])
def test_kid_matches_torch_fidelity(monkeypatch: pytest.MonkeyPatch, full_gram: bool) -> None:
    if not full_gram:
        monkeypatch.setattr(fid_module, "_FULL_GRAM_MAX", 0)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 48)).astype(np.float32)
    y = (rng.standard_normal((250, 48)) * 1.1 + 0.1).astype(np.float32)
    # our function draws its first argument's subset first, as torch-fidelity draws input1's: both orders agree
    for first, second in ((x, y), (y, x)):
        mean, std = kernel_inception_distance(first, second, subsets=20, subset_size=100, seed=123)
        ref_mean, ref_std = _torch_fidelity_kid(first, second, 20, 100, 123)
        assert mean == pytest.approx(ref_mean, rel=1e-9)
        assert std == pytest.approx(ref_std, rel=1e-9)
        assert mean > 0
    # ... and the order matters (other subsets are drawn), so a swapped call is not comparable
    assert kernel_inception_distance(x, y, 20, 100, 123)[0] != pytest.approx(
        kernel_inception_distance(y, x, 20, 100, 123)[0], rel=1e-6
    )


def test_kid_class_is_torch_fidelitys_generated_reference_order() -> None:
    from benchmark.metrics import Precomputed

    rng = np.random.default_rng(21)
    real = rng.standard_normal((40, 2048)).astype(np.float32)
    fake = (rng.standard_normal((30, 2048)) * 1.2 + 0.05).astype(np.float32)
    kid = KID(Precomputed({"extractor": "test"}), subsets=7, subset_size=12, seed=5)
    kid.update_features(real, real=True)
    kid.update_features(fake, real=False)
    out = kid.compute()
    # torch-fidelity's calculate_metrics(input1=generated, input2=reference)
    mean, std = _torch_fidelity_kid(fake, real, 7, 12, 5)
    assert out["kid_mean"] == pytest.approx(mean, rel=1e-9) and out["kid_std"] == pytest.approx(std, rel=1e-9)
    assert out["kid_mean"] != pytest.approx(_torch_fidelity_kid(real, fake, 7, 12, 5)[0], rel=1e-6)
    assert (out["kid_subset_size"], out["kid_subset_size_requested"]) == (12, 12)
    assert out["kid_subsets"] == 7 and out["kid_seed"] == 5 and out["extractor"] == "test"


def test_kid_subset_size_over_n_is_capped_and_recorded() -> None:
    from benchmark.metrics import Precomputed

    rng = np.random.default_rng(22)
    real = rng.standard_normal((25, 2048)).astype(np.float32)
    fake = rng.standard_normal((18, 2048)).astype(np.float32) + 0.1
    kid = KID(Precomputed(), subsets=4, subset_size=1000, seed=9)
    kid.update_features(real, real=True)
    kid.update_features(fake, real=False)
    out = kid.compute()
    # the size used is the smaller set's 18, recorded beside the 1000 asked for
    assert out["kid_subset_size"] == 18 and out["kid_subset_size_requested"] == 1000
    assert (out["n_real"], out["n_fake"]) == (25, 18)
    # torch-fidelity refuses 1000 outright; with the size we used it gives our value
    with pytest.raises(ValueError, match="KID subset size"):
        _torch_fidelity_kid(fake, real, 4, 1000, 9)
    mean, std = _torch_fidelity_kid(fake, real, 4, 18, 9)
    assert out["kid_mean"] == pytest.approx(mean, rel=1e-9) and out["kid_std"] == pytest.approx(std, rel=1e-9)


def _kid_mmd2_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of the whole sets with the KID kernel k(a, b) = (a·b/d + 1)³, written out in numpy."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d, m, n = x.shape[1], len(x), len(y)
    kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    off_diagonal_x, off_diagonal_y = ~np.eye(m, dtype=bool), ~np.eye(n, dtype=bool)
    return float(kxx[off_diagonal_x].mean() + kyy[off_diagonal_y].mean() - 2.0 * kxy.mean())


def test_kid_class_measures_reference_against_generated() -> None:
    """KID of two clearly different sets: the class's value is the MMD² of those two sets (far from 0), not a
    set against itself. With equal set sizes and subset size = n every subset is a whole set (the draws only
    permute it), so the mean is the full-set MMD² whatever the sampling and the std is ~0."""
    from benchmark.metrics import Precomputed

    rng = np.random.default_rng(23)
    real = rng.standard_normal((40, 2048)).astype(np.float32)
    fake = (rng.standard_normal((40, 2048)) + 0.5).astype(np.float32)  # mean shift 0.5: MMD² ≈ 1 + 1.95 − 2
    expected = _kid_mmd2_numpy(fake, real)
    assert expected > 0.5
    # a set passed as both sides scores <= 0 here (the cross term keeps the diagonal), far below the true value
    assert max(_kid_mmd2_numpy(real, real), _kid_mmd2_numpy(fake, fake)) < 0.0
    kid = KID(Precomputed(), subsets=5, subset_size=1000, seed=3)
    kid.update_features(real, real=True)
    kid.update_features(fake, real=False)
    out = kid.compute()
    assert out["kid_subset_size"] == 40
    assert out["kid_mean"] == pytest.approx(expected, rel=1e-9)
    assert out["kid_std"] < 1e-9 * expected
    assert out["kid_mean"] == pytest.approx(_torch_fidelity_kid(fake, real, 5, 40, 3)[0], rel=1e-9)


class _FixedEmbeddingCLIP:
    """Stands in for the transformers CLIP model + processor torchmetrics calls, returning fixed embeddings."""

    def __init__(self, image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> None:
        self.image, self.text = torch.from_numpy(image_embeddings), torch.from_numpy(text_embeddings)
        self.config = SimpleNamespace()

    def __call__(self, images=None, text=None, **_):
        return {"pixel_values": torch.zeros(1), "input_ids": torch.zeros(1), "attention_mask": torch.zeros(1)}

    def to(self, _device):
        return self

    def get_image_features(self, _pixels):
        return self.image

    def get_text_features(self, _ids, _mask):
        return self.text


def test_clip_t_matches_torchmetrics_formula() -> None:
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update

    rng = np.random.default_rng(3)
    text = rng.standard_normal((6, 16))
    image = text * rng.uniform(0.5, 2.0, (6, 1)) + 0.8 * rng.standard_normal((6, 16))  # unnormalised, cos > 0
    stub = _FixedEmbeddingCLIP(image, text)
    images = [torch.zeros(3, 8, 8, dtype=torch.uint8)] * 6
    reference, n = _clip_score_update(images, ["caption"] * 6, stub, stub)
    ours = clip_t_scores(image, text)
    np.testing.assert_allclose(ours, reference.numpy(), rtol=1e-12)
    assert n == 6 and ours.mean() == pytest.approx(max(float(reference.mean()), 0.0), rel=1e-12)
    # Per-pair clamp: an opposite pair scores 0 instead of pulling the mean down.
    assert clip_t_scores(
        np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 0.0], [-1.0, 0.0]])
    ).tolist() == [
        100.0,
        0.0,
    ]


def test_cmmd_by_hand_and_naive_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    # x = {(0,0), (3,4)}, y = {(0,0), (0,0)}: with q = exp(-25/200), Kxx = (1+q)/2, Kyy = 1, Kxy = (1+q)/2,
    # so CMMD = 1000 * (1 - q) / 2.
    x, y = np.array([[0.0, 0.0], [3.0, 4.0]]), np.zeros((2, 2))
    assert cmmd(x, y) == pytest.approx(1000 * (1 - math.exp(-0.125)) / 2, rel=1e-12)
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-12)

    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((20, 8)) * 3, rng.standard_normal((15, 8)) * 3 + 1

    def mean_k(p: np.ndarray, q: np.ndarray) -> float:
        return np.mean([[math.exp(-np.sum((u - v) ** 2) / (2 * 10.0**2)) for v in q] for u in p])

    naive = 1000 * (mean_k(a, a) + mean_k(b, b) - 2 * mean_k(a, b))
    assert cmmd(a, b) == pytest.approx(naive, rel=1e-9)
    monkeypatch.setattr(cmmd_module, "_BLOCK", 7)  # the blocked path gives the same value
    assert cmmd(a, b) == pytest.approx(naive, rel=1e-9)
    assert cmmd(a, b, sigma=2.0) != pytest.approx(naive)
    # float32 embeddings (as CLIP gives them) are computed in float64 too: exact to 1e-9, not float32's 1e-6
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    a64, b64 = a32.astype(np.float64), b32.astype(np.float64)  # the same values, held in float64
    naive32 = 1000 * (mean_k(a64, a64) + mean_k(b64, b64) - 2 * mean_k(a64, b64))
    for first, second in ((a32, b32), (a32, b64), (a64, b32)):
        assert cmmd(first, second) == pytest.approx(naive32, rel=1e-9)


@pytest.fixture(scope="module")
def inception_weights(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "inception" / "pt_inception-random.pth"


@pytest.fixture(scope="module")
def extractor(inception_weights: Path) -> InceptionFeatureExtractor:
    return InceptionFeatureExtractor(inception_weights, device="cpu", batch_size=4)


def _images(seed: int, n: int, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """Smooth random images (so that bicubic resizing has something to do), uint8 N×H×W×3."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 6, 8, 3), dtype=np.uint8)
    return np.stack(
        [np.asarray(Image.fromarray(im).resize(size[::-1], Image.Resampling.BILINEAR)) for im in small]
    )


def test_random_inception_loads_and_matches_torch_fidelity(inception_weights: Path) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ours = load_inception(inception_weights)
    reference = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], str(inception_weights))
    pixels = torch.from_numpy(_images(5, 2, (299, 299))).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        a, (b,) = ours(pixels.float()), reference(pixels)
    assert a.shape == (2, 2048)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert a.std(dim=0).mean() > 0


def test_clean_resize() -> None:
    image = _images(6, 1)[0]
    out = clean_resize(image)
    assert out.shape == (299, 299, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0 and not np.allclose(out, np.round(out))  # not quantised
    square = _images(7, 1, (299, 299))[0]
    np.testing.assert_array_equal(clean_resize(square), square.astype(np.float32))
    np.testing.assert_allclose(clean_resize(np.full((40, 50, 3), 77, np.uint8)), 77.0, atol=1e-4)


def test_clean_resize_matches_clean_fid() -> None:
    import cleanfid.resize as resize
    resizer = resize.make_resizer("PIL", False, "bicubic", (299, 299))
    image = _images(12, 1, (300, 411))[0]
    np.testing.assert_array_equal(clean_resize(image), resizer(image))
    # black and white squares: bicubic overshoots on each edge, and both sides clip the result to [0, 255]
    squares = np.kron(np.indices((7, 9)).sum(axis=0) % 2, np.ones((5, 5), dtype=np.int64))
    sharp = np.repeat((squares * 255).astype(np.uint8)[..., None], 3, axis=2)
    out = clean_resize(sharp)
    np.testing.assert_array_equal(out, resizer(sharp))
    assert out.min() == 0.0 and out.max() == 255.0 and ((out > 0) & (out < 255)).any()


def test_fid_and_kid_classes(extractor: InceptionFeatureExtractor) -> None:
    images = _images(8, 3)
    fid = FID(extractor)
    fid.update(images, real=True)
    features = extractor([Image.fromarray(im) for im in images])
    assert features.shape == (3, 2048) and features.dtype == np.float32
    np.testing.assert_allclose(
        fid.features(real=True), features, rtol=1e-5, atol=1e-6
    )  # arrays == PIL images
    fid.update_features(features, real=False)
    result = fid.compute()
    assert 0.0 <= result["fid"] < 1e-6
    assert result["n_real"] == result["n_fake"] == 3
    assert result["weights_sha256"] == extractor.provenance["weights_sha256"] and len(result["weights_sha256"]) == 64
    assert result["extractor"].startswith("inception-v3") and result["resize"].startswith("clean")

    other = extractor(_images(9, 2))
    fid.reset()
    fid.update_features(features, real=True)
    fid.update_features(other, real=False)
    assert fid.compute()["fid"] > 0

    kid = KID(extractor, subsets=10)
    kid.update_features(features, real=True)
    kid.update_features(other, real=False)
    out = kid.compute()
    assert out["kid_subset_size"] == 2 and out["n_real"] == 3 and out["n_fake"] == 2
    assert math.isfinite(out["kid_mean"]) and out["kid_std"] >= 0
    # torch-fidelity's KID of (generated, reference) with the class's defaults (seed 2020, 10 subsets of 2)
    mean, std = _torch_fidelity_kid(other, features, 10, 2, 2020)
    assert out["kid_mean"] == pytest.approx(mean, rel=1e-9) and out["kid_std"] == pytest.approx(std, rel=1e-9)


PYTORCH_FID_WEIGHTS = (  # written out by hand: the file every FID in the literature is computed with
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)


def test_inception_weights_are_never_silently_replaced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, inception_weights: Path
) -> None:
    """The weights file comes from the argument, else $LAION_SG_INCEPTION_WEIGHTS, else torch hub's checkpoint
    cache under pytorch-fid's file name; it is downloaded (from pytorch-fid's release) only when allowed."""
    import hashlib

    from benchmark.metrics.inception import inception_provenance

    monkeypatch.delenv("LAION_SG_INCEPTION_WEIGHTS", raising=False)
    hub = tmp_path / "hub" / "not-yet-made"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    cached = hub / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(FileNotFoundError) as info:
        resolve_inception_weights()
    assert str(info.value) == (
        f"FID Inception weights not found at {cached}. Pass weights_path, set $LAION_SG_INCEPTION_WEIGHTS, "
        f"or allow downloading {PYTORCH_FID_WEIGHTS}."
    )
    for missing in (tmp_path / "missing.pth", tmp_path):  # a folder is not a weights file
        with pytest.raises(FileNotFoundError) as info:
            resolve_inception_weights(missing)
        assert str(info.value) == f"Inception weights not found: {missing}"
    monkeypatch.setenv("LAION_SG_INCEPTION_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="^Inception weights not found: .*missing.pth$"):
        resolve_inception_weights()
    assert resolve_inception_weights(inception_weights) == inception_weights  # the argument wins over the variable
    monkeypatch.setenv("LAION_SG_INCEPTION_WEIGHTS", str(inception_weights))
    assert resolve_inception_weights() == inception_weights
    monkeypatch.delenv("LAION_SG_INCEPTION_WEIGHTS")

    downloads: list[tuple[str, str]] = []

    def download(url: str, destination: str) -> None:  # stands in for the network: copies the tiny weights
        downloads.append((url, destination))
        Path(destination).write_bytes(inception_weights.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.raises(FileNotFoundError):
        inception_provenance()  # not allowed by default
    assert downloads == [] and not cached.exists()
    provenance = inception_provenance(allow_download=True)
    assert downloads == [(PYTORCH_FID_WEIGHTS, str(cached))]
    assert provenance == {
        "extractor": "inception-v3-tf-2015-12-05/pool3",
        "weights_path": str(cached),
        "weights_sha256": hashlib.sha256(inception_weights.read_bytes()).hexdigest(),
        "resize": "clean: PIL bicubic per float32 channel to 299x299, clip [0,255], no quantisation",
    }
    assert resolve_inception_weights() == cached and len(downloads) == 1  # found in the cache, not fetched again
    cached.unlink()  # the cache folder stays: a new download goes into it
    assert resolve_inception_weights(allow_download=True) == cached and len(downloads) == 2


@pytest.fixture
def empty_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, inception_weights: Path) -> Path:
    """An empty torch hub folder, no weights variable, and a download that copies the tiny weights (no network);
    returns where a download lands."""
    monkeypatch.delenv("LAION_SG_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(
        torch.hub,
        "download_url_to_file",
        lambda url, destination: Path(destination).write_bytes(inception_weights.read_bytes()),
    )
    return tmp_path / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"


def test_inception_extractor_defaults_device_and_batches(
    monkeypatch: pytest.MonkeyPatch, empty_hub: Path, inception_weights: Path
) -> None:
    """No download unless allowed; the device defaults to the CPU where CUDA is missing and the network and the
    pixels go to the device asked for; images reach the network 32 at a time, as clean-resized N×3×299×299."""
    with pytest.raises(FileNotFoundError, match="allow downloading"):
        InceptionFeatureExtractor()
    assert InceptionFeatureExtractor(allow_download=True).provenance["weights_path"] == str(empty_hub)
    if not torch.cuda.is_available():  # where CUDA is said to be there, the network is moved to it
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        with pytest.raises((AssertionError, RuntimeError), match="(?i)cuda|nvidia"):
            InceptionFeatureExtractor(inception_weights)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert InceptionFeatureExtractor(inception_weights).device == torch.device("cpu")
    on_meta = InceptionFeatureExtractor(inception_weights, device="meta")
    assert {p.device.type for p in on_meta.model.parameters()} == {"meta"}

    seen: list[torch.Tensor] = []

    def network(pixels: torch.Tensor) -> torch.Tensor:  # records what the network would be given
        seen.append(pixels)
        return torch.full((len(pixels), 2048), float(len(seen)))

    on_meta.model = network
    images = _images(13, 33, (20, 30))
    features = on_meta(images)
    assert [tuple(batch.shape) for batch in seen] == [(32, 3, 299, 299), (1, 3, 299, 299)]
    assert {batch.device.type for batch in seen} == {"meta"}
    assert features.dtype == np.float32 and features.shape == (33, 2048)
    np.testing.assert_array_equal(features[:, 0], [1.0] * 32 + [2.0])
    on_meta.device = torch.device("cpu")
    seen.clear()
    on_meta(images[:2])
    np.testing.assert_array_equal(seen[0].permute(0, 2, 3, 1).numpy(), np.stack([clean_resize(im) for im in images[:2]]))
    assert on_meta([]).shape == (0, 2048)


def test_clip_embedding_helpers_on_hand_made_cases(tiny_models_dir: Path) -> None:
    """The provenance of hub names, hub schemas and local folders; unit rows (a lone 1-d vector too); paired
    shapes; RGBA, grey and array images all reach the model as RGB."""
    from benchmark.metrics.clip_embedding import _as_pil, clip_provenance, cosine_scores, l2_normalize

    assert clip_provenance("ViT-L-14", "openai") == {
        "clip_model": "ViT-L-14", "clip_pretrained": "openai", "clip_weights_sha256": None,
    }  # fmt: skip
    assert clip_provenance("hf-hub:org/clip", "openai")["clip_pretrained"] is None  # the schema names the weights
    local = clip_provenance(tiny_models_dir / "open_clip", "openai")
    assert local["clip_model"] == f"local-dir:{tiny_models_dir / 'open_clip'}" and local["clip_pretrained"] is None
    assert len(local["clip_weights_sha256"]) == 64
    np.testing.assert_allclose(l2_normalize(np.array([3.0, 4.0])), [0.6, 0.8])
    np.testing.assert_allclose(l2_normalize(np.array([[3.0, 4.0], [0.0, 2.0]])), [[0.6, 0.8], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"paired embeddings differ in shape: \(2, 2\) vs \(1, 2\)"):
        cosine_scores(np.ones((2, 2)), np.ones((1, 2)))
    images = [Image.new("RGBA", (4, 4), (10, 20, 30, 0)), Image.new("L", (4, 4), 7), np.zeros((4, 4, 3), np.uint8)]
    assert [im.mode for im in _as_pil(images)] == ["RGB", "RGB", "RGB"]
    assert _as_pil(images)[0].getpixel((0, 0)) == (10, 20, 30)
    embedder = CLIPEmbedder(tiny_models_dir / "open_clip", device="cpu")
    with pytest.raises(ValueError, match="^nothing to embed$"):
        embedder.embed_texts([])
    assert not any(p.requires_grad for p in embedder.model.parameters())  # frozen
    defaults = inspect.signature(CLIPEmbedder).parameters  # LAION-SG's CLIP: ViT-L/14, OpenAI weights
    assert (defaults["model"].default, defaults["pretrained"].default) == ("ViT-L-14", "openai")
    assert defaults["batch_size"].default == 32
    if not torch.cuda.is_available():  # no device given: CUDA when there is one, else the CPU
        assert CLIPEmbedder(tiny_models_dir / "open_clip").device == torch.device("cpu")


def test_clip_metrics_with_tiny_open_clip(tiny_models_dir: Path) -> None:
    embedder = CLIPEmbedder(tiny_models_dir / "open_clip", device="cpu")
    assert embedder.provenance["clip_model"].startswith("local-dir:")
    assert len(embedder.provenance["clip_weights_sha256"]) == 64
    images, references = _images(10, 3), _images(11, 3)
    texts = ["a red cube on a table", "two dogs", "a man riding a horse"]
    image_emb, text_emb = embedder.embed_images(images), embedder.embed_texts(texts)
    np.testing.assert_allclose(np.linalg.norm(image_emb, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(text_emb, axis=1), 1.0, rtol=1e-12)

    clip_t = CLIPScore(embedder)
    clip_t.update([Image.fromarray(im) for im in images], texts)
    assert clip_t.compute()["clip_t"] == pytest.approx(clip_t_scores(image_emb, text_emb).mean(), rel=1e-6)

    clip_i = CLIPImageScore(embedder)
    clip_i.update(images, images)
    assert clip_i.compute()["clip_i"] == pytest.approx(1.0, abs=1e-6)
    clip_i.reset()
    clip_i.update(images, references)
    assert -1.0 <= clip_i.compute()["clip_i"] < 1.0

    metric = CMMD(embedder)
    metric.update(images, real=True)
    metric.update_embeddings(embedder.embed_images(references), real=False)
    out = metric.compute()
    assert out["cmmd"] == pytest.approx(cmmd(image_emb, embedder.embed_images(references)), rel=1e-9)
    assert out["n_real"] == out["n_fake"] == 3 and out["cmmd_sigma"] == 10.0


NAN, INF = float("nan"), float("inf")
TAIL = "; the features of those images are unusable (check the images and the feature extractor)"


@pytest.mark.parametrize(
    ("sides", "problems"),
    [
        ({"reference": np.ones((3, 2)), "generated": np.zeros((2, 2))}, None),
        ({"reference": [[1.0, NAN], [1.0, 2.0], [INF, -INF]]}, "2 of 3 reference rows"),
        ({"reference": [[NAN, 0.0]] + [[0.0, 0.0]] * 2, "generated": [[-INF], [NAN]]}, "1 of 3 reference rows and 2 of 2 generated rows"),
        ({"text_embeddings": [[0.0], [NAN]]}, "1 of 2 text embeddings rows"),  # keyword underscores read as spaces
        ({"generated": np.full((2, 2, 2), 1.0), "reference": np.array([[[1.0, 1.0], [1.0, NAN]], [[0.0, 0.0], [0.0, 0.0]]])}, "1 of 2 reference rows"),
        ({"score": np.float64(NAN)}, "1 of 1 score rows"),  # a 0-d value is one row
        ({"score": np.float64(1.0)}, None),
        ({"empty": np.zeros((0, 4)), "names": np.array(["nan", "inf"])}, None),  # nothing numeric to check
        ({"empty": np.zeros((0, 4)), "reference": [[NAN]]}, "1 of 1 reference rows"),  # a skipped side ends nothing
        ({"generated": np.array([[1.0], [NAN]], dtype=np.float32)}, "1 of 2 generated rows"),  # any float width
    ],
)
def test_require_finite_names_each_side_and_counts_its_rows(sides: dict, problems: str | None) -> None:
    if problems is None:
        require_finite("FID", **sides)
        return
    with pytest.raises(ValueError) as info:
        require_finite("FID", **sides)
    assert str(info.value) == f"FID: non-finite values (NaN or inf) in {problems}{TAIL}"


def _naive_cmmd(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """The reference definition, one kernel value at a time: 1000 · (mean Kxx + mean Kyy − 2 mean Kxy)."""

    def mean_k(p: np.ndarray, q: np.ndarray) -> float:
        return float(np.mean([[math.exp(-np.sum((u - v) ** 2) / (2 * sigma**2)) for v in q] for u in p]))

    return 1000 * (mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y))


def test_cmmd_class_accumulates_halves_and_reports_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(9)
    real, fake = rng.standard_normal((7, 5)), (rng.standard_normal((4, 5)) + 0.5).astype(np.float32)
    metric = CMMD(Precomputed({"clip_model": "m"}), sigma=2.0)
    metric.update_embeddings(real[:3], real=True)
    metric.update_embeddings(fake, real=False)  # float32 embeddings are computed in float64
    metric.update_embeddings(real[3:], real=True)
    out = metric.compute()
    assert out == {"cmmd": pytest.approx(_naive_cmmd(real, fake.astype(np.float64), 2.0), rel=1e-9), "cmmd_sigma": 2.0, "n_real": 7, "n_fake": 4, "clip_model": "m"}
    metric.reset()
    with pytest.raises(RuntimeError, match="^CMMD needs real and generated embeddings$"):
        metric.compute()
    metric.update_embeddings(real, real=True)
    with pytest.raises(RuntimeError, match="^CMMD needs real and generated embeddings$"):
        metric.compute()  # the generated set is still empty
    metric.update_embeddings(np.array([[np.nan] * 5]), real=False)
    with pytest.raises(ValueError, match="^CMMD: non-finite values .* in 1 of 1 generated rows"):
        metric.compute()
    message = "update() needs real=True (reference images) or real=False (generated images)"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        metric.update(embeddings=real)  # which set is never guessed
    # the reference embedder of the CMMD paper (CLIP ViT-L/14 at 336 px, OpenAI weights) is the default
    built = []
    monkeypatch.setattr(cmmd_module, "CLIPEmbedder", lambda *args, **kwargs: built.append((args, kwargs)) or Precomputed())
    assert CMMD(device="cpu").sigma == 10.0
    assert built == [(("ViT-L-14-336", "openai"), {"device": "cpu"})]


@pytest.mark.parametrize(
    ("x", "y"),
    [(np.zeros(3), np.zeros((2, 3))), (np.zeros((2, 3)), np.zeros((2, 4))), (np.zeros((0, 3)), np.zeros((2, 3))), (np.zeros((2, 3)), np.zeros((0, 3)))],
)
def test_cmmd_refuses_what_is_not_two_embedding_sets(x: np.ndarray, y: np.ndarray) -> None:
    with pytest.raises(ValueError, match=rf"^need two non-empty \(n, d\) embedding sets, got {re.escape(str(x.shape))} and {re.escape(str(y.shape))}$"):
        cmmd(x, y)


def test_cmmd_of_far_apart_sets_and_the_kernel_clamp() -> None:
    """Sets 1e4 apart: every cross kernel value underflows to 0, each set's own is 1, so CMMD = 1000 · 2. Rounding
    can make a squared distance slightly negative; it is clamped to 0 (kernel 1), never above."""
    x, y = np.full((3, 2), 1e4), np.zeros((2, 2))
    assert cmmd(x, y) == pytest.approx(2000.0, rel=1e-12)
    same = np.full((4, 3), 1e8 / 3)  # ‖a‖² + ‖b‖² − 2a·b cancels badly here
    assert cmmd(same, same) == pytest.approx(0.0, abs=1e-9)
    assert cmmd_module._mean_gaussian_kernel(same, same, 10.0) == pytest.approx(1.0, abs=1e-12)


def test_cmmd_function_names_the_non_finite_side() -> None:
    good, bad = np.zeros((2, 3)), np.array([[0.0, 0.0, 0.0], [INF, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"^CMMD: non-finite values \(NaN or inf\) in 1 of 2 x rows;"):
        cmmd(bad, good)
    with pytest.raises(ValueError, match=r"^CMMD: non-finite values \(NaN or inf\) in 1 of 2 y rows;"):
        cmmd(good, bad)
    assert cmmd(np.zeros((2, 3), dtype=np.float16), np.ones((1, 3), dtype=np.int64)) == pytest.approx(1000 * (2 - 2 * math.exp(-3 / 200)))


def test_feature_stats_and_frechet_compute_in_float64_and_refuse_bad_shapes() -> None:
    rng = np.random.default_rng(11)
    x32 = rng.standard_normal((40, 6)).astype(np.float32)
    mu, sigma = feature_stats(x32)
    x64 = x32.astype(np.float64)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x64.mean(axis=0), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(sigma, np.cov(x64, rowvar=False), rtol=1e-13, atol=1e-15)
    mu2, sigma2 = feature_stats(x64[::-1] + 0.5)
    expected = _fid_references(mu, sigma, mu2, sigma2)["scipy_sqrtm"]
    ours = frechet_distance(mu.astype(np.float32), sigma.astype(np.float32), mu2.astype(np.float32), sigma2.astype(np.float32))
    cast = [a.astype(np.float32).astype(np.float64) for a in (mu, sigma, mu2, sigma2)]
    assert ours == pytest.approx(_fid_references(*cast)["scipy_sqrtm"], rel=1e-9) and ours == pytest.approx(expected, rel=1e-5)
    for bad in (np.zeros(5), np.zeros((1, 5))):
        with pytest.raises(ValueError, match=rf"^need an \(n >= 2, d\) feature array, got shape {re.escape(str(bad.shape))}$"):
            feature_stats(bad)
    with pytest.raises(ValueError, match=r"^feature_stats: non-finite values \(NaN or inf\) in 1 of 40 features rows;"):
        feature_stats(np.vstack([x64[:39], [[np.nan] * 6]]))
    eye = np.eye(6)
    for args in [
        (np.zeros(6), eye, np.zeros(5), eye),  # means differ in length
        (np.zeros(6), eye, np.zeros(6), np.eye(5)),  # covariances differ
        (np.zeros(5), eye, np.zeros(5), eye),  # covariances do not fit the means
    ]:
        shapes = f"mu {args[0].shape} / {args[2].shape}, sigma {args[1].shape} / {args[3].shape}"
        with pytest.raises(ValueError, match=f"^shape mismatch: {re.escape(shapes)}$"):
            frechet_distance(*args)


# ---------------------------------------------------------------------- the metric classes as torchmetrics metrics

from metric_cases import cases  # noqa: E402


def test_metric_classes_are_torchmetrics_metrics_naming_their_record_keys() -> None:
    import torchmetrics

    from benchmark.metrics import RECORD_METRICS, GraphIoU, QuestionScore, VISORScore

    questions = {
        "question_score": "Q-Score", "question_entity": "Q-Entity", "question_attribute": "Q-Attribute",
        "question_relation": "Q-Relation",
    }  # fmt: skip
    visor = {
        "visor_uncond": "VISOR", "visor_cond": "VISOR-cond", "oa": "OA", "visor_1": "VISOR-1", "visor_2": "VISOR-2",
        "visor_3": "VISOR-3", "visor_4": "VISOR-4",
    }  # fmt: skip
    expected = {
        GraphIoU: ({"sg_iou": "SG-IoU", "entity_iou": "Entity-IoU", "relation_iou": "Relation-IoU"}, True, "graph_iou"),
        FID: ({"fid": "FID"}, False, "fid"),
        KID: ({"kid_mean": "KID"}, False, "kid"),
        CLIPScore: ({"clip_t": "CLIP-T"}, True, "clip_t"),
        CLIPImageScore: ({"clip_i": "CLIP-I"}, True, "clip_i"),
        CMMD: ({"cmmd": "CMMD"}, False, "cmmd"),
        QuestionScore: (questions, True, "questions"),
        VISORScore: (visor, True, "visor"),
    }
    assert tuple(expected) == RECORD_METRICS
    tracks = {QuestionScore: "questions", VISORScore: "spatial"}
    for cls, (labels, higher, details) in expected.items():
        assert issubclass(cls, torchmetrics.Metric), cls
        assert (cls.labels, cls.higher_is_better, cls.details_key) == (labels, higher, details), cls
        assert cls.track == tracks.get(cls, "compsg"), cls
        assert cls.is_differentiable is False and cls.full_state_update is False


def test_metrics_package_names_are_their_definitions() -> None:
    """`benchmark.metrics` imports its names on first use; each is the object its module defines, and `cmmd` and
    `graph_iou` stay the functions although submodules of the same names are imported."""
    import benchmark.metrics as package

    assert set(package._LAZY) | {"RECORD_METRICS"} == set(package.__all__)
    assert set(package._RECORD_METRICS) <= set(package._LAZY)
    for name, module in package._LAZY.items():
        assert getattr(package, name) is getattr(importlib.import_module(module), name), name
    for name in ("cmmd", "graph_iou"):
        importlib.import_module(f"benchmark.metrics.{name}")  # on a first import, Python sets package.<name> to it
    from benchmark.metrics import cmmd, graph_iou
    from benchmark.metrics.graph_match import graph_iou as functional_graph_iou

    assert cmmd is cmmd_module.cmmd and graph_iou is functional_graph_iou


@pytest.mark.parametrize("case", cases(), ids=lambda case: case.name)
def test_metric_class_equals_its_functional_form_whole_in_parts_and_merged(case) -> None:
    whole = case.make()
    case.feed(whole, 0)
    case.feed(whole, 1)
    assert case.value(whole.compute()) == case.expected  # exactly: the same arrays reach the same function
    # two processes' worth of state, merged as torchmetrics merges: list states concatenated, the incoming state
    # first (so KID, whose subsets are drawn by row index, sees the rows in the same order)
    first, second = case.make(), case.make()
    case.feed(first, 0)
    case.feed(second, 1)
    second.merge_state(first)
    assert case.value(second.compute()) == case.expected


@pytest.mark.parametrize("case", cases(), ids=lambda case: case.name)
def test_metric_reset_empties_the_state(case) -> None:
    metric = case.make()
    case.feed(metric, 0)
    before = metric.compute() if case.name not in ("FID", "KID") else None  # FID/KID need 2+ rows per part
    case.feed(metric, 1)
    metric.reset()
    assert metric.update_count == 0
    for name, state in metric.metric_state.items():
        assert (state == [] if isinstance(state, list) else int(state) == 0), name
    with pytest.raises((ValueError, RuntimeError)), pytest.warns(UserWarning, match="before the ``update``"):
        metric.compute()
    # what was fed before the reset is gone: part 0 alone gives the value of a fresh metric fed part 0
    case.feed(metric, 0)
    fresh = case.make()
    case.feed(fresh, 0)
    if before is not None:
        assert case.value(metric.compute()) == case.value(before) == case.value(fresh.compute())
    else:
        assert metric.features(True).shape == fresh.features(True).shape == (9, 2048)
        np.testing.assert_array_equal(metric.features(False), fresh.features(False))


def test_metric_compute_does_not_serve_a_stale_value_after_an_update() -> None:
    """torchmetrics caches `compute()`; every way in (update, update_features, update_embeddings,
    update_failed) must drop the cache."""
    from benchmark.metrics import GraphIoU
    from schemas import SceneGraph

    iou = GraphIoU()
    iou.update(SceneGraph(), SceneGraph())
    assert iou.compute()["sg_iou"] == 1.0
    iou.update_failed()
    assert iou.compute()["sg_iou"] == 0.5 and int(iou.failed) == 1
    rng = np.random.default_rng(5)
    clip = CLIPScore(Precomputed())
    clip.update_embeddings(np.ones((2, 3)), np.ones((2, 3)))
    assert clip.compute()["clip_t"] == pytest.approx(100.0)
    clip.update_embeddings(np.array([[1.0, 0, 0]]), np.array([[-1.0, 0, 0]]))
    assert clip.compute()["clip_t"] == pytest.approx(200 / 3)
    fid = FID(Precomputed())
    fid.update_features(rng.standard_normal((3, 2048)), real=True)
    fid.update_features(rng.standard_normal((3, 2048)), real=False)
    first = fid.compute()["fid"]
    fid.update_features(rng.standard_normal((3, 2048)) + 5, real=False)
    assert fid.compute()["fid"] > first and fid.compute()["n_fake"] == 6


def test_update_keeps_its_own_copy_of_the_inputs() -> None:
    features = np.zeros((3, 2048), np.float32)
    fid = FID(Precomputed())
    fid.update_features(features, real=True)
    features[:] = np.nan  # the caller reuses its buffer
    assert np.isfinite(fid.features(True)).all()
    with pytest.raises(TypeError, match="real=True"):
        fid.update(features=features)


def test_clip_metrics_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"^2 images but 1 texts$"):
        CLIPScore(Precomputed()).update(images=[None, None], texts=["a dog"])
    for metric in (CLIPScore(Precomputed()), CLIPImageScore(Precomputed())):
        with pytest.raises(RuntimeError, match=rf"^{type(metric).__name__}\.compute\(\) before any update\(\)$"):
            metric.compute()


def test_images_become_uint8_rgb_arrays_or_are_refused() -> None:
    """PIL images of any mode become H×W×3 uint8 (grey repeated, alpha dropped, as PIL converts); arrays must
    already be uint8 H×W×3 (hand-made cases)."""
    from PIL import Image

    from benchmark.metrics.inception import to_uint8_arrays

    grey = Image.fromarray(np.array([[0, 128], [255, 7]], dtype=np.uint8), mode="L")
    rgba = Image.fromarray(np.full((2, 2, 4), 9, dtype=np.uint8), mode="RGBA")
    rgb = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    arrays = to_uint8_arrays([grey, rgba, rgb])
    np.testing.assert_array_equal(arrays[0], np.repeat(np.array([[0, 128], [255, 7]], dtype=np.uint8)[..., None], 3, 2))
    np.testing.assert_array_equal(arrays[1], np.full((2, 2, 3), 9, dtype=np.uint8))
    np.testing.assert_array_equal(arrays[2], rgb)
    for bad, shown in [
        (np.zeros((2, 2), dtype=np.uint8), "uint8 (2, 2)"),
        (np.zeros((2, 2, 4), dtype=np.uint8), "uint8 (2, 2, 4)"),
        (np.zeros((2, 2, 3), dtype=np.float32), "float32 (2, 2, 3)"),
    ]:
        with pytest.raises(ValueError) as info:
            to_uint8_arrays([bad])
        assert str(info.value) == f"expected uint8 HxWx3 images, got {shown}"


def test_kid_defaults_equal_torch_fidelitys_and_sets_of_unequal_size() -> None:
    """With no arguments KID draws torch-fidelity's 100 subsets of 1,000 rows (seed 2020); the subset size is capped
    at the smaller set, whichever it is; fewer than two rows in a set is refused with both sizes."""
    from benchmark.metrics import Precomputed

    rng = np.random.default_rng(21)
    x, y = rng.standard_normal((1001, 4)), rng.standard_normal((1001, 4)) + 0.1
    assert kernel_inception_distance(x, y) == pytest.approx(_torch_fidelity_kid(x, y, 100, 1000, 2020), rel=1e-9)
    big, small = rng.standard_normal((50, 4)), rng.standard_normal((20, 4))
    for first, second in ((big, small), (small, big)):
        ours = kernel_inception_distance(first, second, subsets=5, subset_size=1000, seed=4)
        assert ours == pytest.approx(_torch_fidelity_kid(first, second, 5, 20, 4), rel=1e-9)
    with pytest.raises(ValueError) as info:
        kernel_inception_distance(x[:1], y[:5])
    assert str(info.value) == "KID needs at least 2 samples per set, got 1 and 5"

    real, fake = rng.standard_normal((30, 2048)), rng.standard_normal((40, 2048))
    kid = KID(Precomputed({"extractor": "elsewhere"}))
    kid.update_features(real, real=True)
    kid.update_features(fake, real=False)
    out = kid.compute()
    mean, std = _torch_fidelity_kid(fake.astype(np.float32), real.astype(np.float32), 100, 30, 2020)
    assert out["kid_mean"] == pytest.approx(mean, rel=1e-6) and out["kid_std"] == pytest.approx(std, rel=1e-6)
    assert {key: out[key] for key in out if key not in ("kid_mean", "kid_std")} == {
        "kid_subsets": 100,
        "kid_subset_size": 30,
        "kid_subset_size_requested": 1000,
        "kid_seed": 2020,
        "kid_order": "generated, reference (torch-fidelity input1, input2)",
        "extractor": "elsewhere",
        "n_real": 30,
        "n_fake": 40,
    }


def test_inception_metric_arguments_states_and_refusals(empty_hub: Path, inception_weights: Path) -> None:
    """FID and KID pass the weights, the download permission and the device to their extractor; an empty set has
    no rows; features must be N×2048 (a tensor that needs gradients is fine); `real` must be said."""
    from benchmark.metrics import Precomputed

    for metric_class in (FID, KID):
        on_meta = metric_class(weights_path=inception_weights, device="meta")
        assert on_meta.extractor.provenance["weights_path"] == str(inception_weights)
        assert on_meta.extractor.device == torch.device("meta")
    with pytest.raises(FileNotFoundError, match="allow downloading"):
        FID()
    assert KID(allow_download=True).extractor.provenance["weights_path"] == str(empty_hub)

    fid = FID(Precomputed())
    for real in (True, False):
        empty = fid.features(real=real)
        assert empty.shape == (0, 2048) and empty.dtype == np.float32
    with pytest.raises(TypeError) as info:
        fid.update(features=np.zeros((1, 2048)))
    assert str(info.value) == "update() needs real=True (reference images) or real=False (generated images)"
    for bad, shape in ((np.zeros((3, 100)), "(3, 100)"), (np.zeros(2048), "(2048,)")):
        with pytest.raises(ValueError) as info:
            fid.update(real=True, features=bad)
        assert str(info.value) == f"expected N x 2048 features, got {shape}"
    with_grad = torch.randn(3, 2048, requires_grad=True)
    fid.update(real=False, features=with_grad)
    np.testing.assert_array_equal(fid.features(real=False), with_grad.detach().numpy())
    assert fid.features(real=True).shape == (0, 2048)


def test_metric_state_helpers_copy_convert_and_concatenate() -> None:
    """`to_state` copies arrays, lists and tensors (a tensor that needs gradients too) into the dtype and device
    asked for; `state_array` reads a list state or a synced tensor back in the dtype asked for (hand-made values)."""
    from benchmark.metrics.base import state_array, to_state

    source = np.array([0.5, 1.5])
    state = to_state(source, np.float32, torch.device("cpu"))
    source[0] = 9.0  # the caller's array changes later; the state does not
    assert state.dtype == torch.float32 and state.tolist() == [0.5, 1.5]
    with_grad = torch.tensor([1.0, 2.0], requires_grad=True)
    from_tensor = to_state(with_grad, np.float64, torch.device("cpu"))
    assert from_tensor.dtype == torch.float64 and from_tensor.tolist() == [1.0, 2.0] and not from_tensor.requires_grad
    assert to_state([3, 4], np.int32, torch.device("cpu")).dtype == torch.int32
    assert to_state([1.0], np.float64, torch.device("meta")).device.type == "meta"

    assert state_array([], np.float64) is None
    ints = [torch.tensor([[1, 2]]), torch.tensor([[3, 4], [5, 6]])]
    rows = state_array(ints, np.int64)
    assert rows.dtype == np.int64 and rows.tolist() == [[1, 2], [3, 4], [5, 6]]
    assert state_array(ints, np.float32).dtype == np.float32
    synced_state = torch.tensor([7, 8])
    synced = state_array(synced_state, np.int64)
    assert synced.dtype == np.int64 and synced.tolist() == [7, 8]
    synced[0], rows[0, 0] = 70, 10  # the caller's arrays are its own: the states do not change
    assert synced_state.tolist() == [7, 8] and ints[0].tolist() == [[1, 2]]
    assert state_array(torch.tensor([7, 8]), np.float64).dtype == np.float64


def test_the_package_lists_its_record_metrics_in_leaderboard_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """`RECORD_METRICS` is looked up lazily, once; an unknown name is an AttributeError naming the module."""
    import benchmark.metrics as metrics

    monkeypatch.delitem(vars(metrics), "RECORD_METRICS", raising=False)  # as in a fresh process: not looked up yet
    names = [metric.__name__ for metric in metrics.RECORD_METRICS]
    assert names == ["GraphIoU", "FID", "KID", "CLIPScore", "CLIPImageScore", "CMMD", "QuestionScore", "VISORScore"]
    assert metrics.RECORD_METRICS is metrics.RECORD_METRICS
    with pytest.raises(AttributeError) as info:
        metrics.NoSuchMetric  # noqa: B018
    assert str(info.value) == "module 'benchmark.metrics' has no attribute 'NoSuchMetric'"
    listed = dir(metrics)
    assert listed == sorted(listed) and {"FID", "KID", "VISORScore", "RECORD_METRICS", "Precomputed"} <= set(listed)
    assert set(metrics.__all__) <= set(listed)
    for call in (metrics.Precomputed(), metrics.Precomputed().embed_images, metrics.Precomputed().embed_texts):
        with pytest.raises(TypeError) as info:
            call(["an image"])
        assert str(info.value) == (
            "these features were computed elsewhere: pass them to update_features / update_embeddings"
        )
    with pytest.raises(ValueError) as info:
        metrics.CLIPImageScore(metrics.Precomputed()).update(_images(3, 2), _images(4, 3))
    assert str(info.value) == "2 images but 3 reference images"


def test_clip_embedder_defaults_reach_open_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no arguments the embedder asks open_clip for LAION-SG's CLIP (ViT-L-14, OpenAI weights) on the CPU
    where CUDA is missing, and encodes 32 items per batch. open_clip's loader is replaced by a recorder (no
    weights can be fetched here): what is checked is what the embedder asks for, not a model's output."""
    import open_clip

    asked: list[tuple[Any, ...]] = []
    batches: list[int] = []

    class Recorder(torch.nn.Module):
        def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
            batches.append(len(tokens))
            return torch.ones(len(tokens), 4)

    def create(name: str, pretrained: str | None = None, device: Any = None) -> tuple[Any, Any, Any]:
        asked.append((name, pretrained, device))
        return Recorder(), None, None

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", create)
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda name: lambda texts: torch.zeros(len(texts), 3))
    embedder = CLIPEmbedder()
    assert asked == [("ViT-L-14", "openai", torch.device("cpu"))]
    assert embedder.provenance == {"clip_model": "ViT-L-14", "clip_pretrained": "openai", "clip_weights_sha256": None}
    embeddings = embedder.embed_texts(["a cat"] * 33)
    assert batches == [32, 1] and embeddings.shape == (33, 4)
    np.testing.assert_allclose(embeddings, 0.5)  # unit rows of ones(4)
    CLIPEmbedder("ViT-B-32", "laion2b_s34b_b79k", device="meta")
    assert asked[-1] == ("ViT-B-32", "laion2b_s34b_b79k", torch.device("meta"))


class _NotAWeight:
    """A pickled object that is not a tensor: `torch.load(weights_only=True)` must refuse to build it."""


def test_load_inception_is_frozen_and_refuses_pickled_code(inception_weights: Path, tmp_path: Path) -> None:
    model = load_inception(inception_weights)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    hostile = tmp_path / "hostile.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": _NotAWeight()}, hostile)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_inception(hostile)


def test_extractors_choose_cuda_when_it_is_there(monkeypatch: pytest.MonkeyPatch, inception_weights: Path) -> None:
    """No device given and CUDA present: the Inception network and open_clip's model are put on "cuda" (the
    move itself is recorded, not made: this machine may have no GPU)."""
    import open_clip

    import benchmark.metrics.inception as inception_module

    moved: list[torch.device] = []

    class Recorder(torch.nn.Module):
        def to(self, device: torch.device) -> Recorder:  # type: ignore[override]
            moved.append(device)
            return self

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(inception_module, "load_inception", lambda path: Recorder())
    assert InceptionFeatureExtractor(inception_weights).device == torch.device("cuda")
    assert moved == [torch.device("cuda")]
    asked: list[Any] = []
    monkeypatch.setattr(
        open_clip, "create_model_and_transforms", lambda name, pretrained, device: asked.append(device) or (Recorder(), None, None)
    )
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda name: None)
    assert CLIPEmbedder("ViT-B-32", "openai").device == torch.device("cuda") and asked == [torch.device("cuda")]
