"""Processing: images, chat templates, tokenisation and batching."""

from aligngpt.processing.image import pad_to_square, preprocess_images, to_rgb
from aligngpt.processing.jinja_templates import jinja_chat_templates, jinja_template
from aligngpt.processing.processor import AlignGPTProcessor, EncodedSample, load_image_processor
from aligngpt.processing.templates import (
    TEMPLATES,
    ChatTemplate,
    Message,
    Segment,
    TurnFormat,
    get_template,
    normalize_messages,
)
from aligngpt.processing.tokenizer import (
    ALIGNMENT_TOKEN,
    IMAGE_TOKEN,
    add_marker_tokens,
    apply_legacy_sentencepiece,
    check_marker_tokens,
    load_tokenizer,
)

__all__ = [
    "ALIGNMENT_TOKEN",
    "add_marker_tokens",
    "check_marker_tokens",
    "AlignGPTProcessor",
    "ChatTemplate",
    "EncodedSample",
    "IMAGE_TOKEN",
    "Message",
    "Segment",
    "TurnFormat",
    "TEMPLATES",
    "apply_legacy_sentencepiece",
    "get_template",
    "jinja_chat_templates",
    "jinja_template",
    "load_image_processor",
    "load_tokenizer",
    "normalize_messages",
    "pad_to_square",
    "preprocess_images",
    "to_rgb",
]
