"""SPRIGHT's caption recipe as pure functions: which caption a sample trains on, and its text when mirrored.

SPRIGHT (Chatterjee et al., "Getting it Right"; model card in ../shared/seeds/) fine-tunes on images that carry a
general and a spatial caption and picks one of the two "in a 50:50 ratio" per image. Its training script also
mirrors images at random without touching the caption, so "a toy to the left of a cat" trains on a picture with the
toy on the right (SPRIGHT-T2I/SPRIGHT issue #7, "Question about random_flip"). Here:

- **The mix** (`plan_captions`, `uses_spatial`): a share ``p`` (SPRIGHT: one half) of the rows that have both
  captions use the spatial one in each epoch, exactly, not a coin per row. Each row gets a rank hash of
  ``spatial-caption:{seed}:{epoch}:{key}`` (SHA-256, its own domain, so it is independent of
  `training.image_transforms.is_flipped`'s hash of the same row); the rows whose hash is below a *cut* use the
  spatial caption, and the cut is the ``k``-th smallest hash of the eligible rows. ``k = floor(p·n)`` for ``n``
  eligible rows (``p`` read as the decimal it is written as: 0.3 is 3/10), plus one row when ``p·n`` is not whole
  and the epoch's draw ``u`` (from ``spatial-caption-odd:{seed}:{epoch}``) is below its fraction, so the odd row
  goes either way across epochs and the mean share is ``p``. For ``p = 1/2`` that is SPRIGHT's 50/50: one more
  row for odd ``n`` when the low bit of the draw's first byte is 1.
  Trade-off: exactness needs the whole key set once per epoch (a Bernoulli coin per row would not, but is only
  right on average: ±√(p(1−p)n) rows). The cut is one integer computed on the driver from the keys alone; a worker
  then decides each of its rows from (seed, epoch, key, cut), so the choice does not depend on the order of the
  rows, the number of workers or the sharding. It is exact as long as training sees the set of eligible rows the
  plan was made from (rows dropped later as unusable shift the count by the rows dropped).
- **Fallback**: a row without a usable spatial caption (null, empty or whitespace: the `spatial_caption` task
  failed or was not run) trains on its original caption and is counted in `CaptionPlan.fallback`. The share is
  over the rows that have both captions, as in SPRIGHT, where every image has both.
- **Flip** (`swap_left_right`, `sample_caption`): when an image is mirrored, the caption it trains with (spatial or
  original) has left and right swapped; when it is not mirrored the caption is untouched. `sample_caption` takes the
  flip decision (`is_flipped`, the one `RowCollator` uses) and the caption choice together and returns both, so
  that the image and its text cannot disagree.

`swap_left_right` swaps whole words only, in the forms lower case, Capitalised and UPPER CASE (other casings such
as "lEfT" are left alone, which keeps the swap its own inverse):

- Swapped: left/right, leftmost/rightmost, lefthand(ed)/righthand(ed), leftward(s)/rightward(s); hyphen
  compounds ("left-hand", "left-handed", "top-left", "right-side"), possessives ("left's"), any punctuation
  around them. Handedness is swapped too: the mirror image of a right-handed player looks left-handed.
- Not touched, because they are other words: bright, righteous, copyright, upright, alright, rightly, rights,
  leftover(s), leftist, lefty.
- Not touched, because the word is not a side there (a heuristic on the neighbouring words): "right" as an
  intensifier and "left" as a verb before a preposition, adverb or article ("right next to", "right in front
  of", "right behind", "left behind", "is left on the table", "left the room"), unless a determiner, a
  possessive, a position word or a direction verb comes first ("on the right next to the door", "the bottom
  left in front of", "facing right in"); "all right"; geometry ("right angle", "right triangle",
  "right-angled"); politics ("left-wing", "right-leaning"). "from left to right" is swapped (the order of a
  list is mirrored too). Known misses: "looking right at the camera" is kept (an intensifier), and so is
  "looking left at the dog" (which, mirrored, should read "right"); "the right to vote" is swapped.

The context words in these rules never include a left/right word, and the swap changes nothing but left/right
words, so every decision is the same before and after a swap: `swap_left_right` is an involution.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from training.image_transforms import is_flipped

__all__ = [
    "CaptionPlan",
    "caption_for",
    "has_spatial_caption",
    "plan_captions",
    "sample_caption",
    "spatial_rank",
    "swap_left_right",
    "uses_spatial",
]

# ---------------------------------------------------------------------- the caption mix

_NO_CUT = 1 << 256  # above every SHA-256 value: all eligible rows use the spatial caption


def spatial_rank(seed: int, epoch: int, key: str) -> int:
    """The rank hash of one row in one epoch (SHA-256 as an integer; its own domain, unrelated to the flip hash)."""
    return int.from_bytes(hashlib.sha256(f"spatial-caption:{seed}:{epoch}:{key}".encode()).digest(), "big")


def _epoch_draw(seed: int, epoch: int) -> Fraction:
    """The epoch's uniform draw in [0, 1) that rounds ``p·n`` up or down. Its leading binary digit is the inverse
    of the low bit of the hash's first byte, so that for ``p = 1/2`` an odd epoch gives the larger half exactly
    when that bit is 1 (the rule before shares other than one half were accepted: same plans, same runs)."""
    digest = hashlib.sha256(f"spatial-caption-odd:{seed}:{epoch}".encode()).digest()
    lower_digits = Fraction(int.from_bytes(digest[1:], "big"), 256 ** (len(digest) - 1))  # in [0, 1)
    return (1 - (digest[0] & 1) + lower_digits) / 2


def _exact_share(value: float) -> Fraction:
    """A share in [0, 1] as the exact fraction it is written as (0.3 -> 3/10, not the float's binary value)."""
    share = Fraction(repr(float(value)))
    if not 0 <= share <= 1:
        raise ValueError(f"the spatial caption share must be between 0 and 1, got {value}")
    return share


def has_spatial_caption(spatial_caption: object) -> bool:
    """Whether a `spatial_caption` cell can be trained on: a string with a non-space character."""
    return isinstance(spatial_caption, str) and bool(spatial_caption.strip())


def uses_spatial(seed: int, epoch: int, key: str, cut: int) -> bool:
    """Whether a row that has a spatial caption trains on it in this epoch (`cut` from `plan_captions`)."""
    return spatial_rank(seed, epoch, key) < cut


@dataclass(frozen=True)
class CaptionPlan:
    """One epoch's caption choice: per key (in the order given) and the counts.

    `cut` is what workers need besides (seed, epoch, key): `uses_spatial(seed, epoch, key, cut)` gives the same
    answer as `use_spatial` for every eligible row. `spatial + original == eligible` and
    `spatial` is ``floor`` or ``ceil`` of ``share·eligible``; `fallback` rows have no spatial caption and train on
    the original one.
    """

    use_spatial: tuple[bool, ...]
    cut: int
    eligible: int
    spatial: int
    fallback: int

    @property
    def original(self) -> int:
        """Rows with both captions that train on the original one (fallback rows not counted)."""
        return self.eligible - self.spatial


def plan_captions(
    keys: Sequence[str],
    seed: int,
    epoch: int,
    has_spatial: Sequence[bool] | None = None,
    share: float = 0.5,
) -> CaptionPlan:
    """Which rows of an epoch train on their spatial caption: the `share` of those that have one, to one row
    (``floor`` or ``ceil`` of ``share·n``; see the module doc).

    `has_spatial[i]` says whether row `keys[i]` has a spatial caption (all rows when None). Keys must be unique:
    a repeated key would get the same rank twice and break the count.
    """
    keys = list(keys)
    flags = [True] * len(keys) if has_spatial is None else [bool(f) for f in has_spatial]
    if len(flags) != len(keys):
        raise ValueError(f"has_spatial has {len(flags)} entries for {len(keys)} keys")
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        repeated = sorted({k for k in keys if k in seen or seen.add(k)})
        raise ValueError(f"keys must be unique; repeated: {repeated[:5]}")
    ranks = [spatial_rank(seed, epoch, k) if flag else None for k, flag in zip(keys, flags, strict=True)]
    eligible = sorted(r for r in ranks if r is not None)
    n = len(eligible)
    wanted = _exact_share(share) * n
    k = math.floor(wanted) + (_epoch_draw(seed, epoch) < wanted - math.floor(wanted))
    cut = eligible[k] if k < n else _NO_CUT
    use = tuple(r is not None and r < cut for r in ranks)
    return CaptionPlan(use_spatial=use, cut=cut, eligible=n, spatial=sum(use), fallback=len(keys) - n)


# ---------------------------------------------------------------------- left <-> right

_PAIRS = {
    "left": "right",
    "leftmost": "rightmost",
    "lefthand": "righthand",
    "lefthanded": "righthanded",
    "leftward": "rightward",
    "leftwards": "rightwards",
}
_SWAP: dict[str, str] = {}
for _a, _b in _PAIRS.items():
    for _x, _y in ((_a, _b), (_b, _a)):
        _SWAP[_x], _SWAP[_x.capitalize()], _SWAP[_x.upper()] = _y, _y.capitalize(), _y.upper()
_SIDE_WORDS = frozenset(w.lower() for w in _SWAP)

# Longest first, so "leftmost" is not read as "left" + "most" (the lookahead forbids that anyway).
_WORD = re.compile(r"(?<!\w)(" + "|".join(sorted(map(re.escape, _SWAP), key=len, reverse=True)) + r")(?!\w)")
_NEXT = re.compile(r"\s+(\w+)")
_HYPHEN_NEXT = re.compile(r"-(\w+)")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# A word before "left"/"right" that makes it a side whatever follows: determiners, possessive pronouns, position
# words, direction verbs.
_SIDE_BEFORE = _words(
    "the a an his her their its my your our whose "
    "far very extreme top bottom upper lower middle center centre front back rear "
    "turn turns turned turning face faces faced facing point points pointed pointing "
    "lean leans leaned leaning tilt tilts tilted tilting head heads headed heading veer veers veered veering"
)
# A word after "left"/"right" (spaced) that makes it an intensifier ("right next to") or a verb ("left behind",
# "left the room") unless a `_SIDE_BEFORE` word or a possessive comes first.
_NOT_SIDE_AFTER = _words(
    "next in into inside on onto upon at by near beside besides behind above below under underneath beneath over "
    "across along alongside against around outside through between among amid before after up down off out "
    "now away here there where alone open unattended the a an his him her them it this that these those"
)
# Words after which "left"/"right" is never a side, whatever comes first.
_NEVER_SIDE_AFTER = _words("angle angles triangle triangles")
_NEVER_SIDE_HYPHENATED = _words("angled wing winger wingers leaning")
# Contractions of "is" end like possessives but are not ("it's right next to").
_CONTRACTIONS = _words("it's that's there's here's he's she's what's who's where's let's")
assert not (_SIDE_BEFORE | _NOT_SIDE_AFTER | _NEVER_SIDE_AFTER | _NEVER_SIDE_HYPHENATED) & _SIDE_WORDS


def _previous_word(text: str, start: int) -> str | None:
    """The word right before text[start] across whitespace only (lower case, curly apostrophes made straight)."""
    i = start
    while i and text[i - 1].isspace():
        i -= 1
    if i == start:
        return None  # at the start, or punctuation in between
    j = i
    while j and (text[j - 1].isalnum() or text[j - 1] in "_'\u2019"):
        j -= 1
    return text[j:i].lower().replace("\u2019", "'") or None


def _is_side(text: str, start: int, end: int) -> bool:
    """Whether the left/right word at text[start:end] names a side (see the module docstring for the rules)."""
    if hyphenated := _HYPHEN_NEXT.match(text, end):
        return hyphenated.group(1).lower() not in _NEVER_SIDE_HYPHENATED
    if start and text[start - 1] == "-" and start > 1 and (text[start - 2].isalnum()):
        return True  # "top-left", "upper-right"
    after = _NEXT.match(text, end)
    following = after.group(1).lower() if after else None
    if following in _NEVER_SIDE_AFTER:
        return False
    previous = _previous_word(text, start)
    if previous == "all":
        return False  # "all right"
    if previous is not None and (
        previous in _SIDE_BEFORE or (previous.endswith(("'s", "s'")) and previous not in _CONTRACTIONS)
    ):
        return True
    return following not in _NOT_SIDE_AFTER


def swap_left_right(text: str) -> str:
    """The caption of the horizontally mirrored image: left and right swapped where they name a side.

    Whole words only, three casings, hyphen compounds and possessives; its own inverse. See the module docstring
    for what is swapped and what is not.
    """

    def swap(match: re.Match[str]) -> str:
        word = match.group(1)
        return _SWAP[word] if _is_side(text, match.start(), match.end()) else word

    return _WORD.sub(swap, text)


# ---------------------------------------------------------------------- one sample


def caption_for(caption: str, spatial_caption: str | None, *, flipped: bool, use_spatial: bool) -> str:
    """The text a sample trains with: the spatial caption when chosen and present (else the original), with left
    and right swapped exactly when the image is mirrored."""
    text = spatial_caption if use_spatial and has_spatial_caption(spatial_caption) else caption
    if not isinstance(text, str):
        raise TypeError(f"a sample needs a caption, got {text!r:.40}")
    return swap_left_right(text) if flipped else text


def sample_caption(
    key: str,
    caption: str,
    spatial_caption: str | None,
    *,
    seed: int,
    epoch: int,
    cut: int,
    flip: bool,
) -> tuple[bool, str]:
    """(mirror the image?, the caption to train with) of one row in one epoch: the single place both are decided.

    `flip` is the run's flip switch (`ImageConfig.flip`); the per-row decision is `is_flipped`, as for the
    scene graphs. `cut` comes from `plan_captions` over the epoch's keys.
    """
    flipped = flip and is_flipped(seed, epoch, key)
    chosen = has_spatial_caption(spatial_caption) and uses_spatial(seed, epoch, key, cut)
    return flipped, caption_for(caption, spatial_caption, flipped=flipped, use_spatial=chosen)
