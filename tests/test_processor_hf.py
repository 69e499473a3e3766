"""``AlignGPTProcessor`` as a transformers processor: Jinja chat templates equal to ours, standard files, AutoProcessor,
the keyword call form, and ``pipeline("image-text-to-text")``.

The chat-template checks run every template name on three tokenizers: the official fixture's SentencePiece LLaMA
tokenizer (BOS), a word-level tokenizer without BOS (Qwen2-like), and the official one with ``<image>`` /
``<alignment>`` added as special tokens whose ids are the markers (the layout of real marker ids).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from jinja2.exceptions import TemplateError
from PIL import Image
from transformers import AutoProcessor, CLIPImageProcessorPil

from aligngpt.modeling.aligngpt import IGNORE_INDEX
from aligngpt.processing import AlignGPTProcessor, add_marker_tokens, get_template, load_tokenizer
from aligngpt.processing.jinja_templates import jinja_template
from aligngpt.processing.processor import LEGACY_PROCESSOR_CONFIG
from aligngpt.processing.templates import TEMPLATES, Message, normalize_messages
from tests.helpers import OFFICIAL, REPO_ROOT, no_bos_tokenizer, subprocess_env, tiny_model_dir

NUM_IMAGE_TOKENS = 5
IMAGE_SIZE = 8
QUESTIONS = ("What is in the picture?", "And what colour is it?", "Is it big?")
ANSWERS = ("It shows a red car.", "The car is red.", "No, it is small.")
SYSTEM = "You are a helpful assistant."
NAMES = sorted(TEMPLATES)
TOKENIZERS = ("official", "no_bos", "official_added_markers")


def _image() -> Image.Image:
    return Image.new("RGB", (12, 6), (200, 30, 30))


def make_processor(kind: str, template: str = "vicuna_v1") -> AlignGPTProcessor:
    """A processor on tokenizer ``kind`` (see the module docstring) with a tiny CLIP image processor."""
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE)
    tokenizer = no_bos_tokenizer() if kind == "no_bos" else load_tokenizer(OFFICIAL / "base_llm")
    image_id, alignment_id = -200, -201
    if kind == "official_added_markers":
        image_id, alignment_id = add_marker_tokens(tokenizer)
        assert image_id >= 0 and alignment_id >= 0
    return AlignGPTProcessor(
        tokenizer, image_processor, num_image_tokens=NUM_IMAGE_TOKENS, image_token_id=image_id,
        alignment_token_id=alignment_id, template=template,
    )  # fmt: skip


@pytest.fixture(scope="module", params=TOKENIZERS)
def processor(request) -> AlignGPTProcessor:
    return make_processor(request.param)


def user_turn(text: str, image: Image.Image | None, string_form: bool) -> dict:
    """A user message in the string form (``<image>\\n`` in front) or transformers' content-block form."""
    if string_form:
        return {"role": "user", "content": ("<image>\n" + text) if image is not None else text}
    blocks = [{"type": "image", "image": image}] if image is not None else []
    return {"role": "user", "content": blocks + [{"type": "text", "text": text}]}


def conversation(rounds: int, image, string_form: bool, system: str | None = None, answered: bool = True) -> list:
    """``rounds`` user turns (the image, if any, in the first) with answers; the last one unanswered unless
    ``answered``."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    for index in range(rounds):
        messages.append(user_turn(QUESTIONS[index], image if index == 0 else None, string_form))
        if answered or index < rounds - 1:
            messages.append({"role": "assistant", "content": ANSWERS[index]})
    return messages


def tokenized(processor, messages: list, image, **kwargs):
    """``apply_chat_template(tokenize=True)``; an image of a string-form conversation goes in ``processor_kwargs``
    (transformers finds images only in content blocks)."""
    in_text = any(isinstance(m["content"], str) and "<image>" in m["content"] for m in messages)
    if in_text:
        kwargs["processor_kwargs"] = {"images": [image]}
    return processor.apply_chat_template(messages, tokenize=True, **kwargs)


def our_ids(processor, messages: list, template: str, image) -> list[int]:
    """Our own path for a generation prompt: ``render`` + an open assistant turn, then ``__call__``."""
    system, turns = normalize_messages(messages)
    prompt = get_template(template).render_text(turns + [Message("assistant", None)], system)
    return processor(prompt, [image])["input_ids"][0].tolist()


# --- the Jinja templates render what the Python templates render ------------------------------------------------
RENDER_CASES = {
    "one text turn": [{"role": "user", "content": "Hello there."}],
    "image blocks": conversation(1, _image(), string_form=False, answered=False),
    "two rounds, system": conversation(2, _image(), string_form=True, system="Be brief.", answered=True),
    "empty system": conversation(2, None, string_form=True, system="", answered=False),
    "leading assistant dropped": [{"role": "assistant", "content": "Hi!"}] + conversation(1, None, True),
    "llava form": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A {curly} car."}],
    "three rounds, blocks": conversation(3, _image(), string_form=False, system="S", answered=True),
}


# (case, generation prompt): a generation prompt needs a final user turn (after an answer one raises, see below).
RENDER_PAIRS = [(case, False) for case in RENDER_CASES] + [
    (case, True) for case, messages in RENDER_CASES.items() if normalize_messages(messages)[1][-1].role == "user"
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("case", "generation_prompt"), RENDER_PAIRS)
def test_jinja_text_equals_the_python_template(name, case, generation_prompt):
    messages = RENDER_CASES[case]
    system, turns = normalize_messages(messages)
    if generation_prompt:
        turns = turns + [Message("assistant", None)]
    expected = get_template(name).render_text(turns, system)
    processor = make_processor("official")
    rendered = processor.apply_chat_template(messages, chat_template=name, add_generation_prompt=generation_prompt)
    assert rendered == expected


def test_jinja_templates_refuse_what_the_python_templates_refuse():
    processor = make_processor("official")
    with pytest.raises(TemplateError, match="turn 1: expected a assistant turn, got user"):
        processor.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ValueError, match="turn 1: expected a assistant turn"):
        normalize_messages([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    answered = conversation(1, None, True)
    with pytest.raises(TemplateError, match="roles must alternate"):
        processor.apply_chat_template(answered, add_generation_prompt=True)
    with pytest.raises(TemplateError, match="unknown role robot"):
        processor.apply_chat_template([{"role": "robot", "content": "a"}])
    video = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "a"}]}]
    with pytest.raises(TemplateError, match="turn 0: unsupported content block type video"):
        processor.apply_chat_template(video)
    with pytest.raises(ValueError, match="turn 0, block 0: unsupported content block"):
        normalize_messages(video)


def test_template_names_aliases_and_raw_jinja():
    processor = make_processor("official", template="chatml")
    messages = conversation(1, None, True, answered=False)
    default = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert default == get_template("chatml").generation_prompt(QUESTIONS[0])
    assert processor.apply_chat_template(messages, chat_template="qwen2", add_generation_prompt=True) == default
    assert processor.apply_chat_template(messages, chat_template="v1", add_generation_prompt=True) == (
        get_template("vicuna_v1").generation_prompt(QUESTIONS[0])
    )
    assert processor.apply_chat_template(messages, chat_template=jinja_template("plain")) == ""
    assert processor.apply_chat_template(messages, chat_template="{{ messages[0]['content'] }}") == QUESTIONS[0]
    with pytest.raises(ValueError, match="Unknown chat template 'conv_mistral'"):
        processor.apply_chat_template(messages, chat_template="conv_mistral")
    assert set(processor.chat_template) == set(TEMPLATES) | {"default"}


# --- tokenised: the ids and the assistant mask equal ours -----------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_generation_prompt_ids_equal_ours(processor, name):
    image = _image()
    cases = [
        (conversation(1, None, string_form=True, answered=False), None),
        (conversation(1, image, string_form=False, answered=False), image),
        (conversation(1, image, string_form=True, answered=False), image),
        (conversation(3, image, string_form=False, answered=False), image),
        (conversation(2, None, string_form=True, system=SYSTEM, answered=False), None),
        (conversation(2, image, string_form=False, system=SYSTEM, answered=False), image),
    ]
    for messages, picture in cases:
        ids = tokenized(processor, messages, picture, chat_template=name, add_generation_prompt=True)
        assert ids.shape[0] == 1
        assert ids[0].tolist() == our_ids(processor, messages, name, picture)

    # The processor's own generation_prompt (default system, history pairs) gives the same ids.
    history = [(("<image>\n" + QUESTIONS[0]), ANSWERS[0])]
    prompt = processor.generation_prompt(QUESTIONS[1], history, template=name)
    expected = processor(prompt, [image])
    messages = conversation(2, image, string_form=False, answered=False)
    out = processor.apply_chat_template(
        messages, chat_template=name, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert torch.equal(out["input_ids"], expected["input_ids"])
    assert torch.equal(out["attention_mask"], expected["attention_mask"])
    assert torch.equal(out["pixel_values"], expected["pixel_values"])
    ids = out["input_ids"][0].tolist()
    assert ids.count(processor.image_token_id) == NUM_IMAGE_TOKENS
    assert ids.index(processor.alignment_token_id) == (0 if processor.bos_token_id is None else 1)


@pytest.mark.parametrize("name", NAMES)
def test_assistant_mask_equals_our_labels_mask(processor, name):
    image = _image()
    cases = [
        (conversation(1, image, string_form=False), image),
        (conversation(3, image, string_form=False, system=SYSTEM), image),
        (conversation(2, None, string_form=True), None),
        (conversation(2, image, string_form=True, system=""), image),
    ]
    for messages, picture in cases:
        out = tokenized(
            processor, messages, picture, chat_template=name, return_dict=True, return_assistant_tokens_mask=True
        )
        sample = processor.encode_conversation(messages, picture, template=name, truncate=False)
        assert out["input_ids"][0].tolist() == sample.input_ids
        mask = [int(label != IGNORE_INDEX) for label in sample.labels]
        assert list(out["assistant_masks"][0]) == mask
        assert sum(mask) > 0
        if picture is not None:
            assert torch.equal(out["pixel_values"][0], sample.pixel_values)


def test_batched_conversations_pad_like_the_processor(processor):
    image = _image()
    batch = [conversation(1, image, string_form=False, answered=False), conversation(2, None, True, answered=False)]
    out = processor.apply_chat_template(batch, add_generation_prompt=True, tokenize=True, return_dict=True)
    expected = processor(
        [
            processor.generation_prompt("<image>\n" + QUESTIONS[0]),
            processor.generation_prompt(QUESTIONS[1], [(QUESTIONS[0], ANSWERS[0])]),
        ],
        [image, None],
    )
    assert torch.equal(out["input_ids"], expected["input_ids"])
    assert torch.equal(out["attention_mask"], expected["attention_mask"])
    assert out["pixel_values"].shape[0] == 1

    # Training conversations in one batch: left-padded rows, each mask the labels mask of its sample.
    training = [conversation(1, image, string_form=False), conversation(2, None, string_form=True)]
    out = processor.apply_chat_template(training, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    for row, (messages, picture) in enumerate(zip(training, [image, None])):
        sample = processor.encode_conversation(messages, picture, truncate=False)
        padding = out["input_ids"].shape[1] - len(sample.input_ids)
        assert out["input_ids"][row, padding:].tolist() == sample.input_ids
        assert list(out["assistant_masks"][row]) == [0] * padding + [int(t != IGNORE_INDEX) for t in sample.labels]


# --- the keyword call form and decoding -------------------------------------------------------------------------
def test_call_takes_the_pipeline_keyword_form(processor, tmp_path):
    image = _image()
    prompt = processor.generation_prompt("<image>\n" + QUESTIONS[0])
    expected = processor([prompt], [image])
    for call in (
        lambda: processor(images=image, text=prompt, return_tensors="pt"),
        lambda: processor(image, prompt),  # transformers' positional order
        lambda: processor(text=[prompt], images=[[image]], padding=True),
    ):
        batch = call()
        assert torch.equal(batch["input_ids"], expected["input_ids"])
        assert torch.equal(batch["pixel_values"], expected["pixel_values"])
    image.save(tmp_path / "red.png")
    from_path = processor(text=prompt, images=str(tmp_path / "red.png"))
    assert torch.equal(from_path["pixel_values"], expected["pixel_values"])

    texts = [prompt, processor.generation_prompt(QUESTIONS[1])]
    as_lists = processor(text=texts, images=[[image], []], return_tensors=None, padding=False)
    assert as_lists["input_ids"][0] == expected["input_ids"][0].tolist()
    assert as_lists["input_ids"][1] == processor(texts[1])["input_ids"][0].tolist()
    assert as_lists["attention_mask"][1] == [1] * len(as_lists["input_ids"][1])
    padded = processor(text=texts, images=[image, None], return_tensors=None)
    assert len(padded["input_ids"][0]) == len(padded["input_ids"][1])
    with pytest.raises(ValueError, match="need padding=True"):
        processor(text=texts, images=[image, None], padding=False)
    with pytest.raises(ValueError, match="one image"):
        processor(text=[prompt], images=[[image, image]])
    with pytest.raises(ValueError, match="text and images only"):
        processor(text=prompt, images=image, videos=[image])
    with pytest.raises(TypeError, match="unexpected keyword"):
        processor(text=prompt, images=image, max_lenght=3)


def test_no_special_tokens_leaves_out_bos():
    processor = make_processor("official")
    prompt = processor.generation_prompt("<image>\n" + QUESTIONS[0])
    with_bos = processor(prompt, [_image()])["input_ids"][0].tolist()
    without = processor(prompt, [_image()], add_special_tokens=False)["input_ids"][0].tolist()
    assert with_bos[0] == processor.tokenizer.bos_token_id and with_bos[1] == processor.alignment_token_id
    assert without[0] == processor.alignment_token_id and without[1:] == with_bos[2:]


def test_decoding_drops_the_markers(processor):
    ids = processor(processor.generation_prompt("<image>\nWhat is it?"), [_image()])["input_ids"]
    answer = processor.tokenizer("the car", add_special_tokens=False)["input_ids"]
    generated = torch.cat([ids, torch.tensor([answer])], dim=1)
    prompt_text = processor.tokenizer.decode(
        [t for t in ids[0].tolist() if t >= 0 and t not in (processor.image_token_id, processor.alignment_token_id)],
        skip_special_tokens=True,
    )
    (full,) = processor.post_process_image_text_to_text(generated)
    assert full.startswith(prompt_text) and full.endswith(processor.tokenizer.decode(answer))
    assert processor.batch_decode(generated, skip_special_tokens=True) == [full]
    assert processor.decode(generated[0, ids.shape[1] :]) == processor.tokenizer.decode(answer).strip()


# --- files, AutoProcessor, folders saved before ----------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("hf_processor"))


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("hf_processor_qwen2"), llm="qwen2")


def test_saved_in_transformers_files_and_loaded_by_auto_processor(model_dir, qwen2_dir):
    names = {path.name for path in model_dir.iterdir()}
    assert {"processor_config.json", "chat_template.jinja", "tokenizer.json", "preprocessor_config.json"} <= names
    assert LEGACY_PROCESSOR_CONFIG not in names
    assert {p.stem for p in (model_dir / "additional_chat_templates").iterdir()} == set(TEMPLATES)
    settings = json.loads((model_dir / "processor_config.json").read_text())
    assert settings["processor_class"] == "AlignGPTProcessor" and settings["num_image_tokens"] == 16
    for folder, default in ((model_dir, "vicuna_v1"), (qwen2_dir, "chatml")):
        assert (folder / "chat_template.jinja").read_text() == jinja_template(default)
        loaded = AutoProcessor.from_pretrained(folder)
        assert type(loaded) is AlignGPTProcessor
        direct = AlignGPTProcessor.from_pretrained(folder)
        assert loaded.settings() == direct.settings() and loaded.template.name == default
        assert loaded.chat_template == direct.chat_template
        assert loaded.chat_template["default"] == loaded.chat_template[default]
        messages = conversation(1, _image(), string_form=False, answered=False)
        assert loaded.apply_chat_template(messages, add_generation_prompt=True) == get_template(
            default
        ).generation_prompt("<image>\n" + QUESTIONS[0])


def test_a_template_override_also_moves_the_default_chat_template(model_dir):
    plain = AlignGPTProcessor.from_pretrained(model_dir, template="plain")
    assert plain.template.name == "plain" and plain.chat_template["default"] == jinja_template("plain")
    messages = conversation(1, _image(), string_form=False)
    assert plain.apply_chat_template(messages) == "<image>" + ANSWERS[0] + "\n"
    with pytest.raises(TypeError, match="unexpected keyword argument 'templat'"):
        AlignGPTProcessor.from_pretrained(model_dir, templat="plain")


def _legacy_copy(model_dir, destination):
    """``model_dir`` as aligngpt saved it before: ``aligngpt_processor.json`` and no chat-template files."""
    shutil.copytree(model_dir, destination)
    settings = json.loads((destination / "processor_config.json").read_text())
    del settings["processor_class"]
    (destination / LEGACY_PROCESSOR_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")
    (destination / "processor_config.json").unlink()
    (destination / "chat_template.jinja").unlink()
    shutil.rmtree(destination / "additional_chat_templates")
    for name in ("tokenizer_config.json", "preprocessor_config.json"):
        config = json.loads((destination / name).read_text())
        config.pop("processor_class", None)
        (destination / name).write_text(json.dumps(config))
    return destination


def test_folders_saved_before_keep_loading(model_dir, tmp_path):
    legacy = _legacy_copy(model_dir, tmp_path / "legacy")
    current = AlignGPTProcessor.from_pretrained(model_dir)
    for loader in (AlignGPTProcessor.from_pretrained, AutoProcessor.from_pretrained):
        old = loader(legacy)
        assert type(old) is AlignGPTProcessor and old.settings() == current.settings()
        assert old.chat_template == current.chat_template
        sample = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A car."}]
        assert (
            old.encode_conversation(sample, _image()).input_ids
            == current.encode_conversation(sample, _image()).input_ids
        )
    # Saving a loaded old folder writes the current files.
    AlignGPTProcessor.from_pretrained(legacy).save_pretrained(tmp_path / "resaved")
    assert AutoProcessor.from_pretrained(tmp_path / "resaved").settings() == current.settings()


def test_bad_processor_folders_fail_with_the_file_named(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="processor_config.json not found: not an aligngpt processor"):
        AlignGPTProcessor.from_pretrained(tmp_path)
    legacy = _legacy_copy(model_dir, tmp_path / "legacy")
    (legacy / LEGACY_PROCESSOR_CONFIG).write_text('{"num_image_tokens": 16,')
    with pytest.raises(ValueError, match=f"{LEGACY_PROCESSOR_CONFIG}: not a readable JSON file"):
        AlignGPTProcessor.from_pretrained(legacy)
    current = shutil.copytree(model_dir, tmp_path / "current")
    settings = json.loads((current / "processor_config.json").read_text())
    (current / "processor_config.json").write_text(json.dumps({**settings, "image_tokens": 3}))
    with pytest.raises(ValueError, match=r"processor_config.json: unknown processor settings \['image_tokens'\]"):
        AlignGPTProcessor.from_pretrained(current)
    del settings["image_token_id"]
    (current / "processor_config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"processor_config.json: processor settings \['image_token_id'\] are missing"):
        AlignGPTProcessor.from_pretrained(current)


AUTO_PROCESSOR_AFTER = """
{imports}
from transformers import AutoProcessor
print(type(AutoProcessor.from_pretrained({path!r})).__name__)
"""


@pytest.mark.parametrize(
    "imports",
    [
        "import aligngpt",
        "from transformers import AutoConfig\nimport aligngpt",
        "import aligngpt\nfrom transformers import LlamaForCausalLM",
        "import aligngpt\nfrom transformers import pipeline",
    ],
)
def test_import_aligngpt_registers_the_processor(model_dir, imports):
    code = AUTO_PROCESSOR_AFTER.format(imports=imports, path=str(model_dir))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["AlignGPTProcessor"]


# --- pipeline("image-text-to-text") ----------------------------------------------------------------------------
MAX_NEW_TOKENS = 6


def _greedy_answer(model, processor, prompt: str, image) -> str:
    """Our own path: the processor's prompt ids, greedy ``generate``, ``processor.decode`` of the new ids."""
    batch = processor(prompt, [image])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return processor.decode(out[0, batch["input_ids"].shape[1] :])


@pytest.mark.parametrize("folder", ["model_dir", "qwen2_dir"])
def test_image_text_to_text_pipeline_answers_like_greedy_generate(request, folder):
    from transformers import AutoModelForImageTextToText, pipeline

    path = request.getfixturevalue(folder)
    pipe = pipeline("image-text-to-text", model=str(path))
    assert type(pipe.processor) is AlignGPTProcessor
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AlignGPTProcessor.from_pretrained(path)
    image = _image()
    history = [("<image>\n" + QUESTIONS[0], ANSWERS[0])]
    cases = [
        (conversation(1, image, string_form=False, answered=False), processor.generation_prompt(history[0][0]), image),
        (
            conversation(2, image, string_form=False, answered=False),
            processor.generation_prompt(QUESTIONS[1], history),
            image,
        ),
        (conversation(1, None, string_form=True, answered=False), processor.generation_prompt(QUESTIONS[0]), None),
    ]
    answers = []
    for messages, prompt, picture in cases:
        (result,) = pipe(
            text=messages, max_new_tokens=MAX_NEW_TOKENS, return_full_text=False, generate_kwargs={"do_sample": False}
        )
        expected = _greedy_answer(model, processor, prompt, picture)
        assert result["generated_text"].strip() == expected
        answers.append(expected)
    assert any(answers), "the tiny model answered nothing: the comparison would be vacuous"
    # The plain (non-chat) form with a prompt that went through the template.
    (result,) = pipe(images=image, text=cases[0][1], max_new_tokens=MAX_NEW_TOKENS, return_full_text=False)
    assert result["generated_text"].strip() == answers[0]


def test_the_readme_transformers_example_runs(model_dir, tmp_path, capsys):
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("### Using it like any transformers model", 1)[1].split("\n### ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    _image().save(tmp_path / "cat.jpg")
    code = code.replace("path/to/model", str(model_dir)).replace("cat.jpg", str(tmp_path / "cat.jpg"))
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == get_template("vicuna_v1").generation_prompt("<image>").split("<image>")[0] + "<image>"
    assert any(line.endswith("supervised tokens") and not line.startswith("0 ") for line in printed)
