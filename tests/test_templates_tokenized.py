"""Every chat template run through ``AlignGPTProcessor`` with a tiny byte-level BPE tokenizer trained here.

Each tokenizer registers that template's special tokens (BOS, stop and role markers) the way the real LLM's does,
so the checks below exercise label masking from message boundaries, image expansion and the alignment slot on
tokenizers with and without a BOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from PIL import Image

from aligngpt.modeling.aligngpt import IGNORE_INDEX
from aligngpt.processing import AlignGPTProcessor
from aligngpt.processing.templates import get_template
from aligngpt.prompts import IMAGE_TOKEN

NUM_IMAGE_TOKENS = 4
IMAGE_TOKEN_ID = -200
ALIGNMENT_TOKEN_ID = -201
IMAGE_SIZE = 8
VOCAB_SIZE = 400

SYSTEM_PROMPT = "You answer questions about toy scenes."
QUESTIONS = ("What colour is the cube?", "How many spheres are left of it?")
ANSWERS = ("The cube is red.", "There are 2 spheres, both small.")
TRAINING_TEXT = (
    "A chat between a curious user and an artificial intelligence assistant.",
    "USER: What colour is the cube? ASSISTANT: The cube is red.",
    "user model assistant system [INST] [/INST] How many spheres are there? There are 2 small spheres.",
    "You are a helpful assistant. You answer questions about toy scenes.",
)


@dataclass(frozen=True)
class TokenizerSpec:
    """Special tokens of the LLM family a template belongs to (``bos=None``: the tokenizer adds no BOS)."""

    bos: str | None
    eos: str
    extra: tuple[str, ...] = ()
    answer_prefix: str = ""  # text the template puts inside the supervised segment before the answer


SPECS = {
    "vicuna_v1": TokenizerSpec(bos="<s>", eos="</s>", answer_prefix=" "),
    "vicuna_v1_nosys": TokenizerSpec(bos="<s>", eos="</s>", answer_prefix=" "),
    "mistral": TokenizerSpec(bos="<s>", eos="</s>", answer_prefix=" "),
    "llama_3": TokenizerSpec(
        bos="<|begin_of_text|>", eos="<|end_of_text|>", extra=("<|start_header_id|>",), answer_prefix=" "
    ),
    "phi": TokenizerSpec(bos=None, eos="<|endoftext|>", answer_prefix=" "),
    "chatml": TokenizerSpec(bos=None, eos="<|im_end|>", extra=("<|im_start|>", "<|endoftext|>")),
    "gemma": TokenizerSpec(bos="<bos>", eos="<eos>", extra=("<start_of_turn>", "<end_of_turn>")),
}


def build_tokenizer(spec: TokenizerSpec):
    """A byte-level BPE fast tokenizer with ``spec``'s special tokens; adds BOS when ``spec.bos`` is set."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    pad = "<pad>"
    specials = [t for t in (spec.bos, spec.eos, pad, *spec.extra) if t is not None]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TRAINING_TEXT, trainer)
    if spec.bos is not None:
        bos_id = backend.token_to_id(spec.bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A $B", special_tokens=[(spec.bos, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=pad,
        additional_special_tokens=list(spec.extra),
        clean_up_tokenization_spaces=False,
    )


@pytest.fixture(scope="module")
def image_processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.new("RGB", (12, 6), (200, 30, 30))


def make_processor(name: str, image_processor, template: str | None = None) -> AlignGPTProcessor:
    """A processor with the tokenizer of template ``name`` (default template: ``template`` or ``name``)."""
    return AlignGPTProcessor(
        build_tokenizer(SPECS[name]),
        image_processor,
        num_image_tokens=NUM_IMAGE_TOKENS,
        image_token_id=IMAGE_TOKEN_ID,
        alignment_token_id=ALIGNMENT_TOKEN_ID,
        template=template or name,
    )


def two_turn_conversation() -> list[dict]:
    return [
        {"from": "system", "value": SYSTEM_PROMPT},
        {"from": "human", "value": f"{IMAGE_TOKEN}\n{QUESTIONS[0]}"},
        {"from": "gpt", "value": ANSWERS[0]},
        {"from": "human", "value": QUESTIONS[1]},
        {"from": "gpt", "value": ANSWERS[1]},
    ]


def supervised_runs(labels: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive supervised (non-ignored) label ids."""
    runs: list[list[int]] = []
    previous_supervised = False
    for label in labels:
        if label != IGNORE_INDEX:
            if not previous_supervised:
                runs.append([])
            runs[-1].append(label)
        previous_supervised = label != IGNORE_INDEX
    return runs


def test_every_non_plain_template_is_covered():
    from aligngpt.processing.templates import TEMPLATES

    assert set(TEMPLATES) - {"plain"} == set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_labels_are_exactly_the_answers_and_their_stop_token(name, image_processor, image):
    processor = make_processor(name, image_processor)
    tokenizer = processor.tokenizer
    spec = SPECS[name]
    (stop,) = get_template(name).stop_strings
    assert stop in tokenizer.all_special_tokens, "the template's stop string must be one special token"

    sample = processor.encode_conversation(two_turn_conversation(), image, template=name)

    assert len(sample.input_ids) == len(sample.labels)
    runs = supervised_runs(sample.labels)
    decoded = [tokenizer.decode(run, skip_special_tokens=False) for run in runs]
    assert decoded == [spec.answer_prefix + answer + stop for answer in ANSWERS]
    assert runs[0][-1] == runs[1][-1] == tokenizer.convert_tokens_to_ids(stop)
    # Supervised labels equal their input ids; nothing of the system prompt or the user turns is supervised.
    for token, label in zip(sample.input_ids, sample.labels):
        assert label in (IGNORE_INDEX, token)
    unsupervised = [t for t, lab in zip(sample.input_ids, sample.labels) if lab == IGNORE_INDEX and t >= 0]
    prompt_text = tokenizer.decode(unsupervised, skip_special_tokens=False)
    assert SYSTEM_PROMPT in prompt_text and all(question in prompt_text for question in QUESTIONS)
    assert not any(answer in prompt_text for answer in ANSWERS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_image_expands_and_alignment_slot_follows_bos(name, image_processor, image):
    processor = make_processor(name, image_processor)
    tokenizer = processor.tokenizer
    spec = SPECS[name]
    sample = processor.encode_conversation(two_turn_conversation(), image, template=name)
    ids = sample.input_ids

    if spec.bos is None:
        assert processor.bos_token_id is None
        assert ids.index(ALIGNMENT_TOKEN_ID) == 0
    else:
        assert ids[0] == tokenizer.convert_tokens_to_ids(spec.bos) == processor.bos_token_id
        assert ids.index(ALIGNMENT_TOKEN_ID) == 1
    assert ids.count(ALIGNMENT_TOKEN_ID) == 1

    first_image = ids.index(IMAGE_TOKEN_ID)
    assert ids.count(IMAGE_TOKEN_ID) == NUM_IMAGE_TOKENS
    assert ids[first_image : first_image + NUM_IMAGE_TOKENS] == [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS
    assert all(label == IGNORE_INDEX for label in sample.labels[: first_image + NUM_IMAGE_TOKENS])

    # The text around the image is the rendered conversation, token for token.
    rendered = processor.render(two_turn_conversation(), template=name)
    before, after = "".join(segment.text for segment in rendered).split(IMAGE_TOKEN)
    text_start = ids.index(ALIGNMENT_TOKEN_ID) + 1
    assert tokenizer.decode(ids[text_start:first_image], skip_special_tokens=False) == before
    assert tokenizer.decode(ids[first_image + NUM_IMAGE_TOKENS :], skip_special_tokens=False) == after

    assert sample.has_image
    assert tuple(sample.pixel_values.shape) == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_unknown_template_names_raise(image_processor, image):
    processor = make_processor("vicuna_v1", image_processor)
    with pytest.raises(ValueError, match="Unknown chat template 'unknown'"):
        processor.encode_conversation(two_turn_conversation(), image, template="unknown")
    with pytest.raises(ValueError, match="Unknown chat template 'unknown'"):
        make_processor("vicuna_v1", image_processor, template="unknown")
