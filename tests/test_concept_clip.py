"""Gen4Gen's CP-CLIP and TI-CLIP on hand-made vectors whose answers are computed by hand in the comments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmark.metrics.clip_embedding import clip_t_scores
from benchmark.metrics.concept_clip import cp_clip, cp_clip_scores, ti_clip, ti_clip_scores

ROOT = Path(__file__).resolve().parents[1]
E1, E2, E3, E4 = np.eye(4)
V = np.array([0.6, 0.8, 0.0, 0.0])  # a unit vector: cos(V, E1) = 0.6, cos(V, E2) = 0.8
W = np.array([0.0, 0.6, 0.8, 0.0])  # cos(V, W) = 0.48


def three_concepts() -> tuple[list, list]:
    regions = [E1, V, None]  # the third concept is not detected
    references = [
        np.stack([E1, E2]),  # cos 1 and 0: mean 0.5 (cos with the mean reference would be 0.707, the best 1)
        np.stack([E2, E3, W]),  # cos 0.8, 0 and 0.48: mean 1.28 / 3
        E4[None, :],  # matches nothing detected: the concept counts 0 however its references look
    ]
    return regions, references


def test_cp_clip_is_the_mean_over_concepts_of_the_mean_over_references() -> None:
    regions, references = three_concepts()
    np.testing.assert_allclose(cp_clip_scores(regions, references), [0.5, 1.28 / 3, 0.0], rtol=0, atol=1e-15)
    # (0.5 + 0.42667 + 0) / 3; pooling all six (region, reference) pairs instead would give 2.28 / 5 = 0.456
    assert cp_clip(regions, references) == pytest.approx((0.5 + 1.28 / 3) / 3, abs=1e-15)


def test_a_missing_concept_costs_its_whole_share() -> None:
    references = [E1[None, :], E2[None, :]]
    assert cp_clip([E1, E2], references) == 1.0
    assert cp_clip([E1, None], references) == 0.5
    assert cp_clip([None, None], references) == 0.0
    assert cp_clip_scores([None, E2], references).tolist() == [0.0, 1.0]


def test_cp_clip_normalises_and_accepts_one_reference_vector() -> None:
    # 3·E1 against (2·E1, 5·E2): the same cosines as unit vectors, 1 and 0
    assert cp_clip([3 * E1], [np.stack([2 * E1, 5 * E2])]) == 0.5
    assert cp_clip([V], [E2]) == pytest.approx(0.8, abs=1e-15)  # a single D-vector is one reference image
    assert cp_clip_scores([V.tolist()], [[E1.tolist()]]).dtype == np.float64


def test_cp_clip_does_not_clamp_or_rescale() -> None:
    assert cp_clip([-E1], [E1]) == -1.0  # below the 0 of a missing concept: no clamp
    assert cp_clip([V], [E1]) == pytest.approx(0.6, abs=1e-15)  # not 2.5 · 0.6 nor 100 · 0.6


@pytest.mark.parametrize(
    ("regions", "references", "message"),
    [
        ([E1], [E1, E2], "1 concept regions but 2 reference sets"),
        ([], [], "no concepts"),
        ([np.zeros(4)], [E1], "zero vector"),
        ([E1], [np.stack([E1, np.zeros(4)])], "zero vector"),
        ([np.array([np.nan, 0, 0, 1])], [E1], "non-finite"),
        ([E1], [np.array([[np.inf, 0, 0, 0]])], "non-finite"),
        ([E1[:3]], [E1], "different dimensions"),
        ([E1, None], [E1, E1[:3]], "different dimensions"),
        ([None], [np.zeros((0, 4))], "one or more non-empty vectors"),
        ([np.stack([E1, E2])], [E1], "one region embedding, got 2"),
    ],
    ids=[
        "count",
        "empty",
        "zero region",
        "zero reference",
        "nan region",
        "inf reference",
        "dims region",
        "dims across concepts",
        "no references",
        "two regions",
    ],
)
def test_cp_clip_refuses_what_it_cannot_score(regions, references, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cp_clip_scores(regions, references)


def test_ti_clip_is_the_mean_cosine_of_image_and_prompt() -> None:
    images = np.stack([E1, V, E3, -E4])
    prompts = np.stack([E1, E1, E2, E4])
    # cos: 1, 0.6, 0, -1 (not clamped)
    np.testing.assert_allclose(ti_clip_scores(images, prompts), [1.0, 0.6, 0.0, -1.0], rtol=0, atol=1e-15)
    assert ti_clip(images, prompts) == pytest.approx(0.6 / 4, abs=1e-15)
    assert ti_clip(4 * V, 0.5 * E2) == pytest.approx(0.8, abs=1e-15)  # one pair, unnormalised vectors
    # the repository's CLIP-T is 100 · max(cos, 0): 100 · TI-CLIP where the cosine is not negative
    np.testing.assert_allclose(
        clip_t_scores(images[:3], prompts[:3]), 100 * ti_clip_scores(images[:3], prompts[:3])
    )


@pytest.mark.parametrize(
    ("images", "prompts", "message"),
    [
        (np.stack([E1, E2]), E1[None, :], "differ"),
        (E1[None, :3], E1[None, :], "differ"),
        (np.zeros((0, 4)), np.zeros((0, 4)), "one or more non-empty vectors"),
        (np.zeros((1, 4)), E1[None, :], "zero vector"),
        (E1[None, :], np.array([[np.nan, 0, 0, 0]]), "non-finite"),
    ],
    ids=["count", "dims", "empty", "zero", "nan"],
)
def test_ti_clip_refuses_what_it_cannot_score(images, prompts, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ti_clip(images, prompts)


def test_the_package_names_them_lazily_outside_the_records() -> None:
    import benchmark.metrics as package
    from benchmark.metrics import concept_clip

    for name in concept_clip.__all__:
        assert getattr(package, name) is getattr(concept_clip, name)
    assert not set(concept_clip.__all__) & set(package._RECORD_METRICS)


def test_the_metrics_import_no_torch() -> None:
    check = (
        "import sys, benchmark.metrics.concept_clip\nassert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_refusals_name_the_metric_the_input_and_the_concept_exactly() -> None:
    """The whole message of each refusal (the parametrised tests above match parts)."""
    import re

    unit, zero = np.array([1.0, 0.0]), np.zeros(2)
    finite = "; the features of those images are unusable (check the images and the feature extractor)"
    cases = [
        (lambda: cp_clip_scores([], []), "CP-CLIP: no concepts"),
        (lambda: cp_clip_scores([None], [zero]),
         "CP-CLIP: reference embeddings of concept 0 holds a zero vector, which has no direction"),
        (lambda: cp_clip_scores([None, zero], [unit, unit]),
         "CP-CLIP: region embedding of concept 1 holds a zero vector, which has no direction"),
        (lambda: cp_clip_scores([np.array([np.nan, 1.0])], [unit]),
         "CP-CLIP: non-finite values (NaN or inf) in 1 of 1 region embedding of concept 0 rows" + finite),
        (lambda: cp_clip_scores([None], [np.zeros((1, 0))]),
         "CP-CLIP: reference embeddings of concept 0 must be one or more non-empty vectors, got shape (1, 0)"),
        (lambda: ti_clip_scores(zero, unit), "TI-CLIP: image embeddings holds a zero vector, which has no direction"),
        (lambda: ti_clip_scores(unit, zero), "TI-CLIP: prompt embeddings holds a zero vector, which has no direction"),
    ]  # fmt: skip
    for call, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            call()
    # one dimension is still a direction: cos = +1 and -1 with the two references
    assert cp_clip_scores([np.array([2.0])], [np.array([[1.0], [-3.0]])]).tolist() == [0.0]
