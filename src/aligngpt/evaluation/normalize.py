"""EvalAI / m4c answer normalisation and the 10-annotator VQA soft accuracy (docs/evaluation.md).

Behaviour is kept bit-for-bit, including two quirks that define the metric (docs/evaluation.md):
the period regex's look-behind is mistyped (so a ``.`` *preceded* by a digit is deleted too), and at most
32 periods are deleted (the official call passes the ``re.UNICODE`` flag value, 32, as the count).
Also, commas are removed before the digit-comma-digit test, so that test can never fire.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
MAX_PERIOD_DELETIONS = 32
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # look-behind mistyped as a look-ahead, as in the metric
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d)(\,)+(?=\d)")

# The standard VQA contraction table (spellings without apostrophe -> with). Upper-case keys never match
# (the text is lower-cased first) and one entry maps the "wrong" way; both are part of the metric.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip


def _punctuation(text: str) -> str:
    strip_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in PUNCTUATION:
        touches_space = (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if (touches_space or strip_all) else " ")
    return _PERIOD.sub("", out, count=MAX_PERIOD_DELETIONS)


def _digits_and_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_vqa_answer(text: str) -> str:
    """EvalAI/m4c normalisation of one answer (steps 1-4 of the normalisation in docs/evaluation.md)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_and_articles(_punctuation(text))


NUM_ANNOTATORS = 10
MATCHES_FOR_FULL_CREDIT = 3


def vqa_answer_scores(human_answers: Sequence[str], where: str = "") -> dict[str, float]:
    """Soft score of every distinct normalised human answer.

    score(u) = mean over the 10 leave-one-out subsets of ``min(1, #matches of u among the other 9 / 3)``.
    """
    answers = [normalize_vqa_answer(a) for a in human_answers]
    if len(answers) != NUM_ANNOTATORS:
        raise ValueError(f"{where}: expected {NUM_ANNOTATORS} human answers, got {len(answers)}")
    scores: dict[str, float] = {}
    for unique in dict.fromkeys(answers):
        accs = []
        for left_out in range(len(answers)):
            matches = sum(1 for j, a in enumerate(answers) if j != left_out and a == unique)
            accs.append(min(1, float(matches) / MATCHES_FOR_FULL_CREDIT))
        scores[unique] = sum(accs) / len(accs)
    return scores


def vqa_soft_score(prediction: str, human_answers: Sequence[str], where: str = "") -> tuple[float, dict]:
    """(score of the normalised prediction, per-distinct-answer scores)."""
    scores = vqa_answer_scores(human_answers, where)
    return scores.get(normalize_vqa_answer(prediction), 0.0), scores
