"""Templates, image preprocessing and the processor's sequence rules."""

from __future__ import annotations

import pytest
from PIL import Image

from aligngpt.processing import (
    AlignGPTProcessor,
    Message,
    get_template,
    load_image_processor,
    load_tokenizer,
    normalize_messages,
    pad_to_square,
    to_rgb,
)
from tests.helpers import OFFICIAL

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@pytest.fixture(scope="module")
def processor():
    return AlignGPTProcessor(
        load_tokenizer(OFFICIAL / "base_llm"),
        load_image_processor(OFFICIAL / "clip_vision_tiny"),
        num_image_tokens=576,
        image_token_id=-200,
        alignment_token_id=-201,
        model_max_length=640,
    )


def test_vicuna_v1_renders_the_official_strings():
    template = get_template("v1")
    assert template.generation_prompt("<image>\nWhat is it?") == f"{SYSTEM} USER: <image>\nWhat is it? ASSISTANT:"
    messages = [Message("user", "q1"), Message("assistant", "a1"), Message("user", "q2"), Message("assistant", "a2")]
    assert template.render_text(messages) == f"{SYSTEM} USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"


def test_plain_template_keeps_only_the_image_and_the_caption():
    system, messages = normalize_messages(
        [{"from": "human", "value": "<image>\nRender a short caption."}, {"from": "gpt", "value": "a red car"}]
    )
    assert get_template("plain").render_text(messages, system) == "<image>a red car\n"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "chatml",
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n",
        ),
        ("gemma", "<start_of_turn>user\nS\n\nq<end_of_turn>\n<start_of_turn>model\na<end_of_turn>\n"),
        ("mistral", "[INST] S\n\nq [/INST] a</s>"),
        ("llama_3", "S <|start_header_id|>user: q <|start_header_id|>assistant: a<|end_of_text|>"),
        ("phi", "S USER: q ASSISTANT: a<|endoftext|>"),
    ],
)
def test_other_templates_render_and_mark_only_answers(name, expected):
    template = get_template(name)
    segments = template.render([Message("user", "q"), Message("assistant", "a")], system="S")
    assert "".join(s.text for s in segments) == expected
    supervised = "".join(s.text for s in segments if s.supervised)
    assert supervised.strip().startswith("a") and "q" not in supervised


def test_roles_must_alternate_and_unknown_templates_fail():
    with pytest.raises(ValueError, match="alternate"):
        normalize_messages([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}])
    with pytest.raises(ValueError, match="unknown role"):
        normalize_messages([{"from": "robot", "value": "a"}])
    assert normalize_messages([{"from": "gpt", "value": "x"}, {"from": "human", "value": "q"}])[1] == [
        Message("user", "q")
    ]
    with pytest.raises(ValueError, match="Unknown chat template 'conv_mistral'"):
        get_template("conv_mistral")


def test_labels_cover_answers_and_their_stop_token(processor):
    conversation = [
        {"from": "human", "value": "What is two plus two?"},
        {"from": "gpt", "value": "Four."},
        {"from": "human", "value": "And three?"},
        {"from": "gpt", "value": "Five."},
    ]
    sample = processor.encode_conversation(conversation)
    supervised = [t for t in sample.labels if t != -100]
    assert processor.tokenizer.decode(supervised) == "Four.</s> Five.</s>"
    assert supervised.count(processor.tokenizer.eos_token_id) == 2


def test_truncation_keeps_the_image_whole(processor):
    long_answer = " ".join(["word"] * 200)
    conversation = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": long_answer}]
    image = Image.new("RGB", (10, 10))
    sample = processor.encode_conversation(conversation, image)
    assert len(sample.input_ids) == processor.model_max_length
    assert sample.input_ids.count(-200) == 576
    tight = AlignGPTProcessor(**{**_settings(processor), "model_max_length": 300})
    with pytest.raises(ValueError, match="inside its image"):
        tight.encode_conversation(conversation, image)


def _settings(processor):
    settings = processor.settings()
    return {"tokenizer": processor.tokenizer, "image_processor": processor.image_processor, **settings}


def test_pad_to_square_uses_the_mean_colour_and_centres():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    square = pad_to_square(image, (122, 116, 104))
    assert square.size == (40, 40)
    assert square.getpixel((0, 0)) == (122, 116, 104) and square.getpixel((20, 20)) == (255, 0, 0)
    assert square.getpixel((20, 9)) == (122, 116, 104) and square.getpixel((20, 10)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_any_pil_mode_converts_to_rgb(mode, processor):
    image = Image.new(mode, (7, 3))
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (7, 3)
    assert processor.preprocess_images([image]).shape == (1, 3, 48, 48)


def test_call_requires_one_image_per_image_prompt(processor):
    prompt = get_template("vicuna_v1").generation_prompt("<image>\nWhat?")
    with pytest.raises(ValueError, match="one image"):
        processor([prompt, prompt], [Image.new("RGB", (4, 4))])
    with pytest.raises(ValueError, match="exactly when"):
        processor([prompt], [None])
    batch = processor([prompt, "Hi"], [Image.new("RGB", (4, 4)), None])
    assert batch["pixel_values"].shape[0] == 1
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()
    assert batch["attention_mask"][1, 0] == 0  # left padding for generation
