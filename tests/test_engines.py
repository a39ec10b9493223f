"""Engines: the hf generator on the tiny Qwen, and the request/response plumbing of the vllm and openai engines."""

from __future__ import annotations

import io
import json
import sys

import jsonschema
import pyarrow as pa
import pytest
from awkward_images import skimage_photo_bytes
from openai_server import TINY_QWEN_LIMITS, TINY_QWEN_MAX_NEW_TOKENS
from PIL import Image

from pipelines.answers import parse_spatial_caption
from pipelines.engines import EngineOptions, build_engine
from pipelines.engines.base import ENGINE_OUTPUT_SCHEMA, PASSTHROUGH_COLUMNS, image_data_url, openai_messages
from pipelines.engines.hf import HFGenerator
from pipelines.engines.http_session import ResilientSession, api_key_headers
from pipelines.engines.openai import OpenAIEngine, chat_completions_url
from pipelines.engines.processor import ERROR_COLUMN, normalise_processor_output
from pipelines.engines.vllm import VLLMEngine, vllm_config_kwargs
from pipelines.prompting import PromptTemplate
from pipelines.tasks import Task, get_task


@pytest.fixture(scope="module")
def generator(tiny_models_dir) -> HFGenerator:
    return HFGenerator(
        str(tiny_models_dir / "qwen2_5_vl"), EngineOptions(max_new_tokens=TINY_QWEN_MAX_NEW_TOKENS)
    )


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _string_values(value: object) -> list[str]:
    """Every string value (not key) in a parsed JSON document."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _string_values(item)]
    if isinstance(value, list):
        return [s for item in value for s in _string_values(item)]
    return []


def test_hf_generator_follows_each_task_schema(generator: HFGenerator) -> None:
    """Every answer is valid JSON that validates against its task's schema, `pattern`s included.

    Constrained decoding must enforce the whole schema, not only its shape: without the string `pattern`s
    (`TINY_QWEN_LIMITS.text_pattern` is ``^[a-z][a-z ]{0,7}$``) the random-weight model writes names like
    ``"stshang ["`` or never closes a string. Several requests per task put many strings under the patterns,
    so a grammar that drops them is caught by `jsonschema` even where the lenient parser would repair the text.
    """
    photo = skimage_photo_bytes("coffee.png")
    scene = get_task("scene_graph", TINY_QWEN_LIMITS)
    text = get_task("text_to_graph", TINY_QWEN_LIMITS)
    spatial = get_task("spatial_caption")
    graph_requests = [
        (scene, scene.request(image=photo)),
        (scene, scene.request(image=_png(64, 48))),
        (scene, scene.request(image=skimage_photo_bytes("astronaut.png"))),
        (text, text.request("a dog on a red sofa")),
        (text, text.request("two cats under a wooden table")),
        (text, text.request("a man riding a horse")),
    ]
    caption_requests = [
        (spatial, spatial.request(image=photo)),
        (spatial, spatial.request(image=_png(64, 48))),
    ]
    generations = generator.generate([request for _, request in graph_requests])
    generations += generator.generate([request for _, request in caption_requests], max_new_tokens=400)
    checked_strings = 0
    for (task, _), generation in zip(graph_requests + caption_requests, generations, strict=True):
        assert generation.error is None and generation.truncated is False, (task.name, generation)
        answer = json.loads(generation.text)  # constrained decoding gives parseable JSON, no repair needed
        jsonschema.validate(answer, task.schema, format_checker=jsonschema.FormatChecker())
        checked_strings += len(_string_values(answer))
        parsed = task.parse(generation.text)
        assert parsed.status in ("ok", "repaired"), (task.name, generation.text, parsed)
    assert checked_strings >= 20, checked_strings  # enough strings under a pattern for a lost pattern to show


def test_a_registered_task_runs_on_the_engine_unchanged(generator: HFGenerator) -> None:
    prompt = PromptTemplate(
        "colour", "v1", frozenset({"image"}), "You name colours.", "Main colour?", "0" * 40
    )
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    task = Task(
        "colour",
        prompt,
        schema,
        parse_spatial_caption,
        lambda value: {"colour": value},
        {"colour": pa.string()},
    )
    generation = generator.generate([task.request(image=_png(40, 40))])[0]
    assert json.loads(generation.text)["colour"] in {"red", "green", "blue"}


def test_one_bad_request_fails_alone(generator: HFGenerator) -> None:
    task = get_task("scene_graph", TINY_QWEN_LIMITS)
    requests = [
        task.request(image=_png(64, 64)),
        task.request(image=_png(6000, 2)),
        task.request(image=_png(50, 70)),
    ]
    good, bad, also_good = generator.generate(requests)
    assert bad.text is None and bad.error.startswith("engine error: ") and "aspect ratio" in bad.error
    assert good.error is None and also_good.error is None


def test_vllm_config_is_built_without_importing_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.data.llm import vLLMEngineProcessorConfig

    monkeypatch.setitem(sys.modules, "vllm", None)  # any `import vllm` now raises ImportError
    options = EngineOptions(
        batch_size=16,
        num_actors=2,
        max_model_len=4096,
        accelerator_type="H100",
        engine_kwargs={"gpu_memory_utilization": 0.8},
    )
    kwargs = vllm_config_kwargs("Qwen/Qwen2.5-VL-7B-Instruct", options, needs_image=True)
    config = vLLMEngineProcessorConfig(**kwargs)
    assert config.should_continue_on_error is True
    assert (
        config.model_source == "Qwen/Qwen2.5-VL-7B-Instruct"
        and config.batch_size == 16
        and config.concurrency == 2
    )
    assert config.accelerator_type == "H100"
    assert (
        config.engine_kwargs["max_model_len"] == 4096 and config.engine_kwargs["trust_remote_code"] is False
    )
    assert config.engine_kwargs["limit_mm_per_prompt"] == {"image": 1}
    assert config.engine_kwargs["gpu_memory_utilization"] == 0.8
    assert config.prepare_multimodal_stage == {"enabled": True}
    text_only = vllm_config_kwargs("m", EngineOptions(), needs_image=False)
    assert text_only["prepare_multimodal_stage"] == {"enabled": False}
    assert "limit_mm_per_prompt" not in text_only["engine_kwargs"]
    engine = build_engine("vllm", get_task("scene_graph"), "m", EngineOptions())
    assert isinstance(engine.processor_config(), vLLMEngineProcessorConfig)


def test_vllm_requests_carry_the_schema_per_row() -> None:
    task = get_task("scene_graph")
    engine = VLLMEngine(task, "m", EngineOptions(max_new_tokens=300))
    columns = engine.request_columns(task.request(image=_png(8, 8)))
    params = columns["sampling_params"]
    assert json.loads(params["structured_outputs"]["json"]) == task.schema
    assert params["max_tokens"] == 300 and params["temperature"] == 0.0 and "guided_decoding" not in params
    system, user = columns["messages"]
    assert system == {"role": "system", "content": task.request().system}
    assert user["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "image" not in columns  # no column literally named `image` beside the multimodal data
    generation = engine.generation(
        {"generated_text": "{}", "num_generated_tokens": 300, "time_taken_llm": 1.5}
    )
    assert generation.truncated is True and generation.seconds == 1.5


def test_processor_output_keeps_every_row() -> None:
    """Successful, skipped (never sent) and failed rows (e.g. a prompt longer than max_model_len) all come back."""
    base = {"_shard": "s", "_shard_rows": 3, "key": "k", "width": 10, "height": 10}
    rows = [
        {
            **base,
            "_index": 0,
            "skip_reason": None,
            "raw_output": "{}",
            "engine_error": None,
            "seconds": 0.5,
            "truncated": False,
            ERROR_COLUMN: "",
        },
        {
            **base,
            "_index": 1,
            "skip_reason": "truncated image: x",
            ERROR_COLUMN: "skipped: not sent to the model",
            "messages": None,
        },
        {
            **base,
            "_index": 2,
            "skip_reason": None,
            "prompt": "p" * 10,
            ERROR_COLUMN: "ValueError: The decoder prompt (length 9000) is longer than the maximum model length",
        },
    ]
    table = normalise_processor_output(pa.Table.from_pylist(rows))
    assert table.schema == ENGINE_OUTPUT_SCHEMA
    out = table.to_pylist()
    assert [r["_index"] for r in out] == [0, 1, 2]
    assert out[0]["raw_output"] == "{}" and out[0]["engine_error"] is None
    assert out[1]["engine_error"] is None and out[1]["skip_reason"] == "truncated image: x"
    assert out[2]["engine_error"].startswith("engine error: ValueError: The decoder prompt")


def test_processor_request_rows_skip_rows_that_cannot_be_sent() -> None:
    engine = OpenAIEngine(get_task("scene_graph"), "gpt-4o", EngineOptions())
    row = {name: None for name in PASSTHROUGH_COLUMNS} | {"caption": None, "prepared_image": _png(8, 8)}
    sent = engine.request_row(row)
    assert sent[ERROR_COLUMN] == "" and "prepared_image" not in sent and sent["payload"]["model"] == "gpt-4o"
    skipped = engine.request_row(row | {"skip_reason": "empty file (0 bytes)"})
    assert skipped[ERROR_COLUMN] and "payload" not in skipped


def test_openai_payload_and_key_handling(monkeypatch: pytest.MonkeyPatch) -> None:
    task = get_task("scene_graph")
    engine = OpenAIEngine(task, "gpt-4o", EngineOptions(max_new_tokens=500, base_url="http://h:1/v1/"))
    payload = engine.payload(task.request(image=_png(8, 8)))
    assert payload["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "scene_graph", "schema": task.schema, "strict": True},
    }
    assert payload["max_tokens"] == 500 and payload["temperature"] == 0.0
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
    monkeypatch.setenv("MY_KEY", "sk-do-not-leak")
    session = ResilientSession(api_key_headers("MY_KEY"))
    assert "sk-do-not-leak" not in repr(session) and "sk-do-not-leak" not in repr(session())
    assert api_key_headers("") == {} and api_key_headers("UNSET_VARIABLE_X") == {}
    config = engine.processor_config()
    assert config.url == "http://h:1/v1/chat/completions" and not config.headers
    assert "sk-do-not-leak" not in repr(config) and "sk-do-not-leak" not in config.model_dump_json()
    answer = {"choices": [{"message": {"content": "{}"}, "finish_reason": "length"}]}
    assert engine.generation({"http_response": {"body": json.dumps(answer)}}).truncated is True
    error = engine.generation({"http_response": {"body": json.dumps({"error": {"message": "rate limited"}})}})
    assert error.text is None and error.error == "engine error: HTTP API error: rate limited"
    error = engine.generation({"http_response": {"body": None, "error": "HTTP 503 (4 tries)"}})
    assert error.text is None and error.error == "engine error: HTTP 503 (4 tries)"


def test_openai_messages_are_openai_shaped() -> None:
    task = get_task("text_to_graph")
    assert openai_messages(task.request("a cat")) == [
        {"role": "system", "content": task.request("a cat").system},
        {"role": "user", "content": task.request("a cat").user},
    ]
    assert image_data_url(Image.new("RGB", (2, 2))).startswith("data:image/png;base64,")
    assert image_data_url(skimage_photo_bytes("rocket.jpg")).startswith("data:image/jpeg;base64,")
