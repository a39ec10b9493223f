"""A tiny random-weight Qwen2.5-VL checkpoint for tests and the offline demo.

`build_tiny_qwen2_5_vl(out_dir)` writes a directory in the same layout as a hub checkpoint, so the normal
loading code works on it unchanged::

    from transformers import AutoModelForImageTextToText, AutoProcessor
    processor = AutoProcessor.from_pretrained(out_dir)
    model = AutoModelForImageTextToText.from_pretrained(out_dir)  # a Qwen2_5_VLForConditionalGeneration

The tokenizer is a byte-level BPE trained here (`tokenizers`) on a small built-in corpus of JSON scene graphs
and English words, with Qwen's pre-tokenization, special tokens and chat template. The vision tower keeps the
real patch geometry (patch 14, temporal patch 2, spatial merge 2) so Qwen's image processor applies as is.
"""

from __future__ import annotations

import json
from itertools import cycle, islice
from pathlib import Path

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_qwen2_5_vl"]

# The chat template of Qwen2.5-VL-*-Instruct (chat_template.json on the hub).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5's special tokens, in the hub tokenizer's order.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

_VOCAB_SIZE = 2048  # an upper bound: the built-in corpus runs out of merges at about 1k tokens
_PATCH_SIZE = 14
_MERGE_SIZE = 2
_OBJECTS = (
    "man woman person child boy girl dog cat horse bird cow sheep car bus truck bicycle motorcycle boat train "
    "airplane tree grass sky cloud sun water river lake sea beach sand mountain hill road street sidewalk building "
    "house wall window door roof fence sign pole light lamp table chair bench sofa bed desk shelf book cup bottle "
    "glass plate bowl fork knife spoon food pizza cake apple banana orange flower plant leaf bush rock stone shirt "
    "jacket coat hat cap helmet shoe boot pants dress skirt bag backpack umbrella hand head hair face eye ear nose "
    "mouth arm leg foot tail wheel screen phone laptop keyboard clock picture frame mirror floor ground field snow"
)
_ATTRIBUTES = (
    "red blue green yellow white black brown gray grey pink purple orange small large big tall short long old young "
    "wooden metal glass plastic stone wet dry open closed empty full bright dark shiny striped round square "
    "sitting standing walking running smiling happy sad clean dirty new colorful"
)
_PREDICATES = (
    "on", "in", "near", "next to", "behind", "in front of", "above", "below", "under", "over", "holding",
    "wearing", "riding", "carrying", "sitting on", "standing on", "walking on", "looking at", "eating",
    "drinking", "playing with", "beside", "inside", "covering", "attached to", "parked on", "hanging on",
    "lying on", "leaning against", "has", "of", "with", "left of", "right of",
)
_SENTENCES = (
    "describe the image as a scene graph in json.",
    "list every object with its attributes and the relations between objects.",
    "return only valid json with the keys objects and relations.",
    "each object has an id, a name and a list of attributes.",
    "each relation has a subject id, a predicate and an object id.",
    "a photo of a man riding a horse on the beach under a blue sky.",
    "a small dog sitting next to a red chair in front of a white house.",
    "the quick brown fox jumps over the lazy dog.",
)


def _corpus() -> list[str]:
    """Deterministic training text: scene graphs as JSON, prose, words and numbers."""
    attributes = cycle(_ATTRIBUTES.split())
    names = cycle(_OBJECTS.split())
    lines = [*_SENTENCES, _OBJECTS, _ATTRIBUTES, " ".join(_PREDICATES)]
    lines += [" ".join(str(i) for i in range(start, start + 50)) for start in (0, 50, 100, 1000)]
    for i, predicate in enumerate(islice(cycle(_PREDICATES), 160)):
        objects = [
            {"id": j, "name": next(names), "attributes": list(islice(attributes, j % 3))} for j in range(3)
        ]
        graph = {
            "objects": objects,
            "relations": [{"subject": i % 3, "predicate": predicate, "object": (i + 1) % 3}],
        }
        lines.append(json.dumps(graph))
        lines.append(json.dumps(graph, indent=2))
        lines.append(json.dumps(graph, separators=(",", ":")))
    return lines


def _train_tokenizer():
    """Byte-level BPE with Qwen2's normalizer, pre-tokenizer and decoder, trained on `_corpus()`."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=_VOCAB_SIZE - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


def _build_processor(out_dir: Path):
    """Qwen2.5-VL processor: the trained tokenizer plus Qwen's image and video processors with small pixel caps."""
    from transformers import (
        AddedToken,
        Qwen2_5_VLProcessor,
        Qwen2Tokenizer,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    model = json.loads(_train_tokenizer().to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=[tuple(m) for m in model["merges"]],
        model_max_length=32768,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS[1:]]}
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    factor = _PATCH_SIZE * _MERGE_SIZE
    pixels = {"min_pixels": 4 * factor * factor, "max_pixels": 16 * factor * factor}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=_PATCH_SIZE, merge_size=_MERGE_SIZE, **pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(patch_size=_PATCH_SIZE, merge_size=_MERGE_SIZE, **pixels),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return processor


def build_tiny_qwen2_5_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight Qwen2.5-VL (model, tokenizer, processor) to `out_dir` and return the path.

    Deterministic: the same `seed` gives byte-identical weights.
    """
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_processor(out).tokenizer
    token_id = tokenizer.convert_tokens_to_ids
    hidden = 64
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "bos_token_id": token_id("<|endoftext|>"),
            "eos_token_id": token_id("<|im_end|>"),
            "pad_token_id": token_id("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": _PATCH_SIZE,
            "spatial_merge_size": _MERGE_SIZE,
            "temporal_patch_size": 2,
            "window_size": 112,
            "out_hidden_size": hidden,
            "fullatt_block_indexes": [1],
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        bos_token_id=token_id("<|endoftext|>"),
        eos_token_id=token_id("<|im_end|>"),
        pad_token_id=token_id("<|endoftext|>"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [token_id("<|im_end|>"), token_id("<|endoftext|>")]
    model.generation_config.pad_token_id = token_id("<|endoftext|>")
    model.save_pretrained(out)
    return out
