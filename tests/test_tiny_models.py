"""The tiny offline models load through the normal hub code paths, run, and are built deterministically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from laion_sg.offline.tiny_clip import build_tiny_open_clip
from laion_sg.offline.tiny_clipseg import build_tiny_clipseg
from laion_sg.offline.tiny_owlv2 import build_tiny_owlv2
from laion_sg.offline.tiny_qwen import build_tiny_qwen2_5_vl
from laion_sg.offline.tiny_sdxl import build_tiny_sdxl

CLIP_IDS_A_PHOTO_OF_A_CAT = [49406, 320, 1125, 539, 320, 2368, 49407]  # OpenAI CLIP's tokenizer


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage.data import astronaut

    return Image.fromarray(astronaut())


def test_qwen_chat_generate(tiny_models_dir: Path, astronaut: Image.Image) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLForConditionalGeneration

    path = tiny_models_dir / "qwen2_5_vl"
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    tokenizer, config = processor.tokenizer, model.config
    assert config.image_token_id == processor.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.text_config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert config.text_config.vocab_size == len(tokenizer)

    messages = [{"role": "user", "content": [{"type": "image", "image": astronaut}, {"type": "text", "text": "Go."}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    prompt = tokenizer.decode(inputs["input_ids"][0])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    n_image_tokens = int((inputs["input_ids"] == config.image_token_id).sum())
    assert n_image_tokens == inputs["image_grid_thw"].prod() // 4 <= 16
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_qwen_tokenizer_round_trips_json(tiny_models_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models_dir / "qwen2_5_vl")
    text = json.dumps({"objects": [{"id": 12, "name": "red car", "attributes": ["shiny"]}], "relations": []})
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) // 2  # merges learned for JSON and English
    assert len(tokenizer) <= 4096


def test_sdxl_generates_deterministically(tiny_models_dir: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models_dir / "sdxl")
    pipe.set_progress_bar_config(disable=True)
    hidden = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert pipe.unet.config.cross_attention_dim == hidden
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.tokenizer("a photo of a cat").input_ids == CLIP_IDS_A_PHOTO_OF_A_CAT
    assert pipe.tokenizer_2.pad_token == "!"

    def generate():
        generator = torch.Generator().manual_seed(0)
        result = pipe("a red car", height=64, width=64, num_inference_steps=2, generator=generator, output_type="np")
        return result.images

    first, second = generate(), generate()
    assert first.shape == (1, 64, 64, 3)
    assert (first == second).all()


def test_open_clip_loads_from_local_dir(tiny_models_dir: Path, astronaut: Image.Image) -> None:
    import open_clip

    name = "local-dir:" + str(tiny_models_dir / "open_clip")
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    assert tokenizer(["a photo of a cat"])[0, :7].tolist() == CLIP_IDS_A_PHOTO_OF_A_CAT
    with torch.no_grad():
        image = model.eval().encode_image(preprocess(astronaut).unsqueeze(0))
        text = model.encode_text(tokenizer(["an astronaut", "a cat"]))
    assert image.shape == (1, 32) and text.shape == (2, 32)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("qwen2_5_vl", build_tiny_qwen2_5_vl),
        ("sdxl", build_tiny_sdxl),
        ("open_clip", build_tiny_open_clip),
        ("owlv2", build_tiny_owlv2),
        ("clipseg", build_tiny_clipseg),
    ],
)
def test_build_is_deterministic(name: str, build, tiny_models_dir: Path, tmp_path: Path) -> None:
    assert _files(build(tmp_path / name, seed=0)) == _files(tiny_models_dir / name)


def test_seed_changes_weights(tiny_models_dir: Path, tmp_path: Path) -> None:
    other = _files(build_tiny_open_clip(tmp_path, seed=1))
    assert other["open_clip_model.safetensors"] != _files(tiny_models_dir / "open_clip")["open_clip_model.safetensors"]
