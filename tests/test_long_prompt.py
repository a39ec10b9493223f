"""Long-prompt text conditioning (`training.long_prompt`) on the tiny random SDXL, and its generation setting.

Oracles: diffusers' own `StableDiffusionXLPipeline.encode_prompt` for prompts that fit in one window (equal
tensors, no tolerance); for longer prompts, which tokens may and may not change which windows."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch

from benchmark.generate import GenerationTask, ImageGenerator
from schemas import BenchmarkInfo, BenchmarkResult, GenerationSettings, ModelInfo, Provenance
from schemas.runs import RunIdentityError, check_run_identity, pin_run_identity
from training.long_prompt import encode_long_prompt, long_prompt_embeds, prompt_windows

L = 77  # tokens per window: BOS + 75 + EOS (the tiny SDXL's tokenizers keep CLIP's model_max_length)


@pytest.fixture(scope="module")
def sdxl_dir(tiny_models_dir):
    return tiny_models_dir / "sdxl"


@pytest.fixture(scope="module")
def pipe(sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parts(pipe):
    return [pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2]


def words(n: int, change: dict[int, str] | None = None) -> str:
    """`n` words of one CLIP token each ("cat"), word i replaced by `change[i]`."""
    change = change or {}
    return " ".join(change.get(i, "cat") for i in range(n))


def n_tokens(pipe, text: str) -> int:
    return len(pipe.tokenizer(text, add_special_tokens=False).input_ids)


def diffusers_encoding(pipe, prompt, negative_prompt=""):
    return pipe.encode_prompt(
        prompt, device=torch.device("cpu"), do_classifier_free_guidance=True, negative_prompt=negative_prompt
    )


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [
        ("a red cat sitting on a wooden table next to a blue vase", ""),
        ("a red cat sitting on a wooden table", "blurry, low quality"),
        ("", ""),
        (words(75), "dog"),  # exactly one full window
        (["a cat on a mat", "two dogs near a tall tree"], ["blurry", ""]),
    ],
)
def test_a_prompt_of_one_window_encodes_as_diffusers_encode_prompt(pipe, prompt, negative):
    for text in [prompt] if isinstance(prompt, str) else prompt:
        assert n_tokens(pipe, text) <= 75
    ours = encode_long_prompt(*parts(pipe), prompt, negative)
    theirs = diffusers_encoding(pipe, prompt, negative)
    for name, a, b in zip(("embeds", "negative", "pooled", "negative pooled"), ours, theirs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.equal(a, b), name
    # the same ids as the tokenizer's own padded, truncated encoding, for both tokenizers (tokenizer_2 pads with "!")
    for tokenizer in parts(pipe)[0]:
        text = prompt if isinstance(prompt, str) else prompt[0]
        padded = tokenizer(text, padding="max_length", max_length=L, truncation=True).input_ids
        assert prompt_windows(tokenizer, text, 75) == [padded]


def test_the_pipeline_arguments_equal_diffusers_for_a_short_prompt(pipe):
    """SDXL base zeroes the unconditional branch when no negative prompt is given; so do the long-prompt arguments."""
    assert pipe.config.force_zeros_for_empty_prompt
    prompt = "a red cat sitting on a wooden table"
    kwargs = long_prompt_embeds(pipe, prompt)
    theirs = pipe.encode_prompt(prompt, device=torch.device("cpu"), do_classifier_free_guidance=True)
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    for name, b in zip(names, theirs, strict=True):
        assert torch.equal(kwargs[name], b), name
    assert not kwargs["negative_prompt_embeds"].any()
    with_negative = long_prompt_embeds(pipe, prompt, "blurry")
    theirs = diffusers_encoding(pipe, prompt, "blurry")
    assert torch.equal(with_negative["negative_prompt_embeds"], theirs[1])


def test_tokens_beyond_the_first_window_condition_the_embeddings(pipe):
    base, changed = words(120), words(120, {100: "dog"})
    assert n_tokens(pipe, base) == n_tokens(pipe, changed) == 120
    a, _, pooled_a, _ = encode_long_prompt(*parts(pipe), base)
    b, _, pooled_b, _ = encode_long_prompt(*parts(pipe), changed)
    assert a.shape == b.shape == (1, 2 * L, 96)
    assert not torch.equal(a[:, L:], b[:, L:])  # token 100 sits in the second window
    assert torch.equal(a[:, :L], b[:, :L])  # the first window, and the pooled embedding taken from it, are untouched
    assert torch.equal(pooled_a, pooled_b)
    # diffusers truncates at 77 tokens: to it both prompts are the same
    assert all(torch.equal(x, y) for x, y in zip(diffusers_encoding(pipe, base), diffusers_encoding(pipe, changed), strict=True))
    # the first window of a long prompt is its first 75 tokens encoded as diffusers encodes them
    assert torch.equal(a[:, :L], diffusers_encoding(pipe, words(75))[0])
    # a change in the first window changes it
    c, _, pooled_c, _ = encode_long_prompt(*parts(pipe), words(120, {10: "dog"}))
    assert not torch.equal(a[:, :L], c[:, :L]) and not torch.equal(pooled_a, pooled_c)


def test_prompt_and_negative_are_padded_to_the_same_windows_with_the_empty_prompt(pipe):
    empty, _, _, _ = encode_long_prompt(*parts(pipe), "")  # the empty prompt's window, as diffusers encodes ""
    assert torch.equal(empty, diffusers_encoding(pipe, "")[0])
    long_text = words(200)  # three windows
    embeds, negative, pooled, negative_pooled = encode_long_prompt(*parts(pipe), long_text, "blurry")
    assert embeds.shape == negative.shape == (1, 3 * L, 96) and pooled.shape == negative_pooled.shape == (1, 32)
    short = diffusers_encoding(pipe, "blurry")
    assert torch.equal(negative[:, :L], short[0]) and torch.equal(negative_pooled, short[2])
    assert torch.equal(negative[:, L : 2 * L], empty) and torch.equal(negative[:, 2 * L :], empty)
    # the other way round: a long negative pads the prompt
    embeds, negative, _, _ = encode_long_prompt(*parts(pipe), "a cat", long_text)
    assert embeds.shape == negative.shape == (1, 3 * L, 96)
    assert torch.equal(embeds[:, L:], empty.repeat(1, 2, 1))
    # and within a batch every row has the longest row's windows
    embeds, negative, pooled, _ = encode_long_prompt(*parts(pipe), ["a cat", words(100)], "blurry")
    assert embeds.shape == negative.shape == (2, 2 * L, 96) and pooled.shape == (2, 32)
    assert torch.equal(embeds[:1, L:], empty) and not torch.equal(embeds[1:, L:], empty)
    assert torch.equal(embeds[:1, :L], diffusers_encoding(pipe, "a cat")[0])


def test_the_window_is_the_tokenizers_length_less_two(pipe):
    tokenizers, encoders = parts(pipe)
    assert [t.model_max_length for t in tokenizers] == [L, L]
    with pytest.raises(ValueError, match="window must be between 1 and 75"):
        encode_long_prompt(tokenizers, encoders, "a cat", window=76)
    embeds, negative, _, _ = encode_long_prompt(tokenizers, encoders, words(25), window=10)  # shorter windows work
    assert embeds.shape == negative.shape == (1, 3 * 12, 96)
    with pytest.raises(ValueError, match="2 negative prompts for 1 prompts"):
        encode_long_prompt(tokenizers, encoders, "a cat", ["a", "b"])


# ------------------------------------------------------------------------------------------- generation setting


def settings(**changes) -> GenerationSettings:
    base = {"seed": 7, "images_per_sample": 1, "num_inference_steps": 2, "guidance_scale": 5.0, "height": 64, "width": 64}
    return GenerationSettings(**base | changes)


def task(text: str) -> GenerationTask:
    return GenerationTask(key="k0", caption=text, sg_text="unused", scene_graph_json="{}")


def test_flag_off_by_default_generates_what_the_plain_pipeline_call_did(sdxl_dir):
    """Off (the default), the adapter calls the pipeline with ``prompt=`` exactly as before the setting existed;
    on, a prompt of one window gives the same bytes (same embeddings, same zero unconditional branch), and a
    paragraph generates."""
    assert settings().long_prompt is False
    prompt = "a red cat sitting on a wooden table"
    generator = ImageGenerator("diffusers-caption", str(sdxl_dir), settings(), device="cpu")
    off = generator([task(prompt)])
    seed = off[0]["seed"]
    image = generator.pipe(
        prompt=prompt,
        num_inference_steps=2,
        guidance_scale=5.0,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    assert off[0]["png"] == buffer.getvalue()
    generator.settings = settings(long_prompt=True)  # the same loaded pipeline, the setting on
    on = generator([task(prompt)])
    assert on[0]["png"] == off[0]["png"] and on[0]["seed"] == seed
    paragraph = generator([task(words(160, {150: "dog"}))])
    assert paragraph[0]["png"].startswith(b"\x89PNG")


def _record(generation: GenerationSettings) -> BenchmarkResult:
    return BenchmarkResult(
        benchmark=BenchmarkInfo(version="1", content_hash="ab" * 32, n_samples=3),
        model=ModelInfo(adapter="diffusers-caption", model_id="/models/x", conditioning="caption"),
        generation=generation,
        metrics={"fid": 1.0},
        provenance=Provenance(
            package_version="0.1.0", packages={}, hardware={}, wall_time_s=1.0, created_at="2026-01-01T00:00:00Z"
        ),
    )


# a record's generation settings as written before `long_prompt` existed
OLD_GENERATION = {
    "seed": 7,
    "images_per_sample": 1,
    "num_inference_steps": 2,
    "guidance_scale": 5.0,
    "height": 64,
    "width": 64,
    "scheduler": None,
    "dtype": "float32",
}


def test_the_setting_is_recorded_only_when_on_so_older_records_and_runs_keep_their_identity(tmp_path):
    old = _record(settings())
    text = old.to_json()
    assert json.loads(text)["generation"] == OLD_GENERATION  # off: dumped exactly as before
    again = BenchmarkResult.from_json(text)  # a record without the key reads with the setting off
    assert again == old and again.generation.long_prompt is False
    identity = {"benchmark": old.benchmark.model_dump(), "model": old.model.model_dump(), "generation": OLD_GENERATION}
    assert old.run_id == hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    # a run directory pinned before the setting existed resumes with it off, and is refused with it on
    pin_run_identity(tmp_path, {"generation": OLD_GENERATION})
    check_run_identity(tmp_path, {"generation": settings().model_dump()})
    with pytest.raises(RunIdentityError, match="generation"):
        check_run_identity(tmp_path, {"generation": settings(long_prompt=True).model_dump()})
    # on: recorded, a different run, and read back on
    on = _record(settings(long_prompt=True))
    assert json.loads(on.to_json())["generation"] == OLD_GENERATION | {"long_prompt": True}
    assert on.run_id != old.run_id and BenchmarkResult.from_json(on.to_json()).generation.long_prompt is True
    # an explicit false reads as the default
    explicit = BenchmarkResult.model_validate(json.loads(text) | {"generation": OLD_GENERATION | {"long_prompt": False}})
    assert explicit == old and explicit.run_id == old.run_id
