"""From a plain text prompt to an image: `text_to_graph` (annotation engine) -> SceneGraph -> SDXLSGPipeline.

This is the README's recipe for users who have a prompt rather than a graph (LAION-SG's users asked for it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from openai_server import TINY_QWEN_LIMITS, TINY_QWEN_MAX_NEW_TOKENS

from pipelines.engines import EngineOptions
from pipelines.engines.hf import HFGenerator
from pipelines.tasks import get_task
from schemas import SceneGraph
from training.pipeline import SDXLSGPipeline
from training.sg_encoder import SGEncoder


def test_prompt_to_graph_to_image(tiny_models_dir: Path, tmp_path: Path) -> None:
    task = get_task("text_to_graph", TINY_QWEN_LIMITS)
    generator = HFGenerator(str(tiny_models_dir / "qwen2_5_vl"),
                            EngineOptions(max_new_tokens=TINY_QWEN_MAX_NEW_TOKENS, device="cpu"), task=task)
    [answer] = generator.generate([task.request(caption="a man riding a horse next to a red barn")])
    parsed = task.parse(answer.text)
    assert parsed.status in ("ok", "repaired"), parsed.error
    graph: SceneGraph = parsed.value
    graph.validate(TINY_QWEN_LIMITS)

    torch.manual_seed(0)
    encoder = SGEncoder(text_dim=96, hidden_dim=16, mlp_hidden_dim=16, num_layers=1)
    SDXLSGPipeline.save_encoder(tmp_path / "sdxl_sg", encoder, base_model=tiny_models_dir / "sdxl")
    pipe = SDXLSGPipeline.from_pretrained(str(tmp_path / "sdxl_sg"))
    image = pipe(scene_graph=graph, num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert image.size == (64, 64) and np.asarray(image).std() > 0
