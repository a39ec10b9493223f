"""SPRIGHT's caption recipe (`training.spatial_captions`): the exact 50/50 mix, the left/right swap of mirrored
images, and the one function that decides both for a sample."""

from __future__ import annotations

import hashlib
import math
import random
import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training import spatial_captions as sc
from training.image_transforms import is_flipped
from training.spatial_captions import (
    caption_for,
    has_spatial_caption,
    plan_captions,
    sample_caption,
    swap_left_right,
    uses_spatial,
)


def _keys(n: int, prefix: str = "row") -> list[str]:
    return [f"{prefix}-{i:06d}" for i in range(n)]


# ---------------------------------------------------------------------- the caption mix


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 7, 10, 33, 100, 257, 1000])
@pytest.mark.parametrize(("seed", "epoch"), [(0, 0), (0, 1), (7, 0), (1234, 5)])
def test_exactly_half_of_an_epoch_uses_the_spatial_caption(n: int, seed: int, epoch: int) -> None:
    plan = plan_captions(_keys(n), seed, epoch)
    assert len(plan.use_spatial) == n
    assert plan.spatial == sum(plan.use_spatial)
    assert plan.eligible == n and plan.fallback == 0
    assert plan.spatial + plan.original == n
    if n % 2 == 0:
        assert plan.spatial == n // 2
    else:
        assert plan.spatial in (n // 2, n // 2 + 1)
        # the documented odd rule, unchanged since before other shares were accepted
        odd_bit = hashlib.sha256(f"spatial-caption-odd:{seed}:{epoch}".encode()).digest()[0] & 1
        assert plan.spatial == n // 2 + odd_bit


@pytest.mark.parametrize("share", [0.0, 0.1, 0.25, 0.3, 2 / 3, 0.9, 1.0])
def test_any_share_is_exact_to_one_row_and_right_on_average(share: float) -> None:
    """``share·n`` rows (as the share is written: 0.3 of 10 is 3, never 4), or for a fraction the row below or
    above it, with a mean over epochs that tends to ``share·n``."""
    for n in (1, 7, 10, 33, 257):
        exact = Fraction(repr(share)) * n
        counts = [plan_captions(_keys(n), 1, epoch, share=share).spatial for epoch in range(64)]
        assert set(counts) <= {math.floor(exact), math.ceil(exact)}, (n, counts)
    assert {plan_captions(_keys(10), 0, epoch, share=0.3).spatial for epoch in range(64)} == {3}
    counts = [plan_captions(_keys(10), 2, epoch, share=share).spatial for epoch in range(400)]
    assert abs(sum(counts) / len(counts) - share * 10) < 0.1  # the draw rounds up with the fraction's odds


def test_a_share_outside_zero_to_one_is_refused() -> None:
    for share in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"^the spatial caption share must be between 0 and 1, got {share}$"):
            plan_captions(_keys(4), 0, 0, share=share)


def test_the_odd_row_goes_either_way_across_epochs() -> None:
    counts = {plan_captions(_keys(11), 0, epoch).spatial for epoch in range(32)}
    assert counts == {5, 6}


def test_the_plan_is_deterministic() -> None:
    keys = _keys(200)
    assert plan_captions(keys, 3, 2) == plan_captions(list(keys), 3, 2)


def test_epochs_and_seeds_give_different_assignments() -> None:
    keys = _keys(400)
    base = plan_captions(keys, 0, 0).use_spatial
    for other in (plan_captions(keys, 0, 1).use_spatial, plan_captions(keys, 1, 0).use_spatial):
        same = sum(a == b for a, b in zip(base, other, strict=True))
        assert 120 < same < 280  # neither the same rows nor their complement: a fresh half


def test_the_choice_does_not_depend_on_row_order() -> None:
    keys = _keys(301)
    plan = plan_captions(keys, 5, 3)
    by_key = dict(zip(keys, plan.use_spatial, strict=True))
    shuffled = keys[:]
    random.Random(0).shuffle(shuffled)
    again = plan_captions(shuffled, 5, 3)
    assert dict(zip(shuffled, again.use_spatial, strict=True)) == by_key
    assert again.cut == plan.cut


def test_shards_decide_their_rows_alone_from_the_cut() -> None:
    """The driver plans over all keys; each worker needs only (seed, epoch, cut) and its own keys."""
    keys = _keys(1000)
    plan = plan_captions(keys, 11, 4)
    expected = dict(zip(keys, plan.use_spatial, strict=True))
    shuffled = keys[:]
    random.Random(1).shuffle(shuffled)
    shards = [shuffled[i::3] for i in range(3)]  # uneven sizes (334, 333, 333)
    decided = {k: uses_spatial(11, 4, k, plan.cut) for shard in shards for k in shard}
    assert decided == expected
    assert sum(decided.values()) == 500


def test_rows_without_a_spatial_caption_fall_back_and_are_counted() -> None:
    keys = _keys(10)
    cells = ["a cup on the left", None, "", "   ", "x", "y", None, "z", "w", "v"]
    flags = [has_spatial_caption(c) for c in cells]
    assert flags == [True, False, False, False, True, True, False, True, True, True]
    plan = plan_captions(keys, 0, 0, flags)
    assert plan.fallback == 4 and plan.eligible == 6
    assert plan.spatial == 3 and plan.original == 3  # 50/50 over the rows that have both captions
    assert not any(use for use, flag in zip(plan.use_spatial, flags, strict=True) if not flag)
    assert not has_spatial_caption(3) and has_spatial_caption(" a ")


def test_no_spatial_captions_at_all() -> None:
    plan = plan_captions(_keys(5), 0, 0, [False] * 5)
    assert plan.use_spatial == (False,) * 5 and plan.fallback == 5 and plan.spatial == 0


def test_one_eligible_row_either_way() -> None:
    """A single eligible row: the odd rule decides (k is 0 or 1), the cut must not crash on k == n."""
    seen = {plan_captions(["only"], 0, epoch).use_spatial for epoch in range(16)}
    assert seen == {(True,), (False,)}
    for epoch in range(16):
        plan = plan_captions(["only"], 0, epoch)
        assert uses_spatial(0, epoch, "only", plan.cut) == plan.use_spatial[0]


def test_the_caption_choice_is_independent_of_the_flip() -> None:
    keys = _keys(4000)
    plan = plan_captions(keys, 0, 1)
    cells = {(s, is_flipped(0, 1, k)) for k, s in zip(keys, plan.use_spatial, strict=True)}
    assert len(cells) == 4
    for spatial in (True, False):
        for flipped in (True, False):
            count = sum(
                1
                for k, s in zip(keys, plan.use_spatial, strict=True)
                if s == spatial and is_flipped(0, 1, k) == flipped
            )
            assert 850 < count < 1150  # 1000 expected


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        plan_captions(["a", "b", "a"], 0, 0)
    with pytest.raises(ValueError, match="entries"):
        plan_captions(["a", "b"], 0, 0, [True])


# ---------------------------------------------------------------------- left <-> right

SWAPS = [
    # the plain sides, in three casings, with punctuation around them
    ("a cup to the left of a plate", "a cup to the right of a plate"),
    ("the dog is on the right.", "the dog is on the left."),
    ("Left of the tree, a dog; RIGHT of it, a cat", "Right of the tree, a dog; LEFT of it, a cat"),
    ("(left) [right] {left}", "(right) [left] {right}"),
    ("\"left\", 'right'!", "\"right\", 'left'!"),
    ("left/right", "right/left"),
    ("left\nright\tleft", "right\nleft\tright"),
    ("on the left side of the road", "on the right side of the road"),
    ("from left to right: a cup, a plate", "from right to left: a cup, a plate"),
    ("the leftmost chair and the RIGHTMOST lamp", "the rightmost chair and the LEFTMOST lamp"),
    ("Leftmost", "Rightmost"),
    ("moving leftwards, looking rightward", "moving rightwards, looking leftward"),
    # compounds and possessives
    ("her left-hand glove", "her right-hand glove"),
    ("a left-handed guitarist", "a right-handed guitarist"),
    ("a lefthand drive car", "a righthand drive car"),
    ("the top-left corner and the bottom-right one", "the top-right corner and the bottom-left one"),
    ("the man's right hand", "the man's left hand"),
    ("the man\u2019s right hand", "the man\u2019s left hand"),
    ("the players' left flank", "the players' right flank"),
    ("the right's edge", "the left's edge"),
    # a side after determiners, position words and direction verbs, whatever follows
    ("on the right next to the door", "on the left next to the door"),
    ("in the bottom left in front of the car", "in the bottom right in front of the car"),
    ("a woman facing right in the photo", "a woman facing left in the photo"),
    ("the far left of the shelf", "the far right of the shelf"),
    ("the cup is right of the plate", "the cup is left of the plate"),
    # other words: never touched
    ("a bright light", "a bright light"),
    ("righteous copyright upright alright rightly", "righteous copyright upright alright rightly"),
    ("all rights reserved, Copyright 2024", "all rights reserved, Copyright 2024"),
    ("leftover pizza and leftovers", "leftover pizza and leftovers"),
    ("Brightness, LEFTIST, lefty", "Brightness, LEFTIST, lefty"),
    ("left_hand xleft rightx left2", "left_hand xleft rightx left2"),
    ("lEfT and rIGHT", "lEfT and rIGHT"),
    # the word is not a side there
    ("a man sitting right next to a woman", "a man sitting right next to a woman"),
    ("right in front of the house", "right in front of the house"),
    ("it's right behind the car", "it's right behind the car"),
    ("a dog left behind", "a dog left behind"),
    ("nothing is left on the plate", "nothing is left on the plate"),
    ("he left the room", "he left the room"),
    ("a right angle and right-angled corners", "a right angle and right-angled corners"),
    ("a left-wing poster, a right-leaning paper", "a left-wing poster, a right-leaning paper"),
    ("all right", "all right"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), SWAPS)
def test_swap_table(text: str, expected: str) -> None:
    assert swap_left_right(text) == expected
    assert swap_left_right(expected) == text


def test_the_table_is_large_enough() -> None:
    assert len(SWAPS) >= 25
    assert sum(a == b for a, b in SWAPS) >= 10  # and covers the words it must not touch


def test_context_words_are_never_side_words() -> None:
    """The condition of the involution: no rule looks at a word the swap changes."""
    context = sc._SIDE_BEFORE | sc._NOT_SIDE_AFTER | sc._NEVER_SIDE_AFTER | sc._NEVER_SIDE_HYPHENATED
    assert not context & sc._SIDE_WORDS
    assert not sc._CONTRACTIONS & sc._SIDE_WORDS


_SIDE_FORMS = sorted(sc._SWAP)
_OTHER = [
    "the", "a", "of", "to", "next", "in", "on", "it's", "man's", "players'", "all", "angle", "wing", "top",
    "facing", "bright", "leftover", "upright", "rights", "cup", "he", "is", "behind", "far",
]  # fmt: skip
_PIECES = st.one_of(
    st.sampled_from(_SIDE_FORMS),
    st.sampled_from(_OTHER),
    st.sampled_from([" ", "  ", "-", "'", "\u2019", ",", ".", "\n", "(", ")", "_", "x"]),
    st.text(max_size=4),
)
_TEXTS = st.lists(_PIECES, max_size=30).map("".join)


@settings(deadline=None)
@given(_TEXTS)
def test_swap_is_an_involution(text: str) -> None:
    assert swap_left_right(swap_left_right(text)) == text


@settings(deadline=None)
@given(st.text())
def test_swap_is_an_involution_on_any_text(text: str) -> None:
    assert swap_left_right(swap_left_right(text)) == text


_SIDE_TOKEN = re.compile(
    r"(?<!\w)(" + "|".join(map(re.escape, sorted(_SIDE_FORMS, key=len, reverse=True))) + r")(?!\w)"
)


@settings(deadline=None)
@given(_TEXTS)
def test_swap_changes_nothing_but_side_words(text: str) -> None:
    swapped = swap_left_right(text)
    assert _SIDE_TOKEN.split(swapped)[::2] == _SIDE_TOKEN.split(text)[::2]
    for before, after in zip(_SIDE_TOKEN.findall(text), _SIDE_TOKEN.findall(swapped), strict=True):
        assert after in (before, sc._SWAP[before])


@settings(deadline=None)
@given(
    st.sampled_from(_SIDE_FORMS), st.sampled_from(["the", "her", "man's", "top", "far"]), st.text(max_size=20)
)
def test_a_side_after_a_determiner_is_always_swapped(side: str, before: str, rest: str) -> None:
    text = f"{before} {side} of {rest}"
    assert swap_left_right(text) == f"{before} {sc._SWAP[side]} of {swap_left_right(rest)}"


# ---------------------------------------------------------------------- one sample

CAPTION = "a cat to the left of a bright lamp"
SPATIAL = "The cat sits on the left; the lamp is on the right."


@pytest.mark.parametrize(
    ("spatial", "flipped", "use_spatial", "expected"),
    [
        (SPATIAL, False, False, CAPTION),
        (SPATIAL, False, True, SPATIAL),
        (SPATIAL, True, False, "a cat to the right of a bright lamp"),
        (SPATIAL, True, True, "The cat sits on the right; the lamp is on the left."),
        (None, False, True, CAPTION),  # fallback
        ("  ", True, True, "a cat to the right of a bright lamp"),  # fallback, still mirrored
    ],
)
def test_caption_for(spatial: str | None, flipped: bool, use_spatial: bool, expected: str) -> None:
    assert caption_for(CAPTION, spatial, flipped=flipped, use_spatial=use_spatial) == expected


def test_caption_for_needs_a_caption_when_it_falls_back() -> None:
    assert caption_for(None, SPATIAL, flipped=False, use_spatial=True) == SPATIAL  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        caption_for(None, None, flipped=False, use_spatial=True)  # type: ignore[arg-type]


@pytest.mark.parametrize("flip", [False, True])
def test_sample_caption_decides_the_flip_and_the_text_together(flip: bool) -> None:
    keys = _keys(200)
    spatial = {k: (None if i % 5 == 0 else f"{SPATIAL} ({k})") for i, k in enumerate(keys)}
    plan = plan_captions(keys, 2, 3, [has_spatial_caption(spatial[k]) for k in keys])
    assert plan.fallback == 40 and plan.spatial == 80
    flips = spatial_used = 0
    for key, use in zip(keys, plan.use_spatial, strict=True):
        flipped, text = sample_caption(key, CAPTION, spatial[key], seed=2, epoch=3, cut=plan.cut, flip=flip)
        # the image is mirrored by the same decision as RowCollator's
        assert flipped == (flip and is_flipped(2, 3, key))
        chosen = spatial[key] if use else CAPTION
        assert text == (swap_left_right(chosen) if flipped else chosen)
        flips += flipped
        spatial_used += text.startswith("The cat")
    assert spatial_used == 80
    assert (0 < flips < 200) if flip else flips == 0
