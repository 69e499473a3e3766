import hashlib
import json
from pathlib import Path

from PIL import Image

from aligngpt.fileio import read_jsonl
from aligngpt.toyworld.dataset import write_dataset
from aligngpt.toyworld.text import parse_caption

SMALL = {"n_pretrain": 30, "n_finetune": 30, "n_eval": 6, "progress": False}


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path):
    write_dataset(tmp_path / "a", seed=11, **SMALL)
    write_dataset(tmp_path / "b", seed=11, **SMALL)
    write_dataset(tmp_path / "c", seed=12, **SMALL)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a["pretrain.json"] != c["pretrain.json"] and a["images/eval/000000.png"] != c["images/eval/000000.png"]
    assert not any(name.startswith(".") or ".tmp" in name for name in a)


def test_finished_folder_is_reused_and_new_settings_rewrite(tmp_path):
    world = write_dataset(tmp_path, seed=1, **SMALL)
    before = world.stat().st_mtime_ns
    assert write_dataset(tmp_path, seed=1, **SMALL).stat().st_mtime_ns == before
    write_dataset(tmp_path, seed=2, **SMALL)
    assert json.loads(world.read_text())["settings"]["seed"] == 2


def _check_conversation(record, source):
    turns = record["conversations"]
    assert turns and len(turns) % 2 == 0, f"{source} {record['id']}"
    assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    image_marks = sum(t["value"].count("<image>") for t in turns)
    if "image" in record:
        assert image_marks == 1 and turns[0]["value"].startswith("<image>\n")
    else:
        assert image_marks == 0


def test_files_are_llava_format(small_dataset):
    root = small_dataset
    world = json.loads((root / "world.json").read_text())
    image_folder = root / world["image_folder"]
    pretrain = json.loads((root / "pretrain.json").read_text())
    finetune = json.loads((root / "finetune.json").read_text())
    assert len(pretrain) == world["counts"]["pretrain"] == 80
    assert len(finetune) == world["counts"]["finetune"] == 80
    ids = [r["id"] for r in pretrain + finetune]
    assert len(set(ids)) == len(ids)
    for record in pretrain:
        _check_conversation(record, "pretrain")
        assert len(record["conversations"]) == 2
        assert 0.0 <= record["true_alignment"] <= 1.0
        assert record["noise_kind"] in {"clean", "partial", "unrelated"}
        assert parse_caption(record["conversations"][1]["value"])
    for record in finetune:
        _check_conversation(record, "finetune")
        assert len(record["tasks"]) == len(record["noisy"]) == len(record["conversations"]) // 2
    for record in pretrain + finetune:
        if "image" in record:
            with Image.open(image_folder / record["image"]) as image:
                assert image.size == (36, 36) and image.mode == "RGB"
    kinds = {r["noise_kind"] for r in pretrain}
    assert kinds == {"clean", "partial", "unrelated"}
    clean = [r["true_alignment"] for r in pretrain if r["noise_kind"] == "clean"]
    assert all(v == 1.0 for v in clean)


def test_eval_files_follow_the_llava_question_style(small_dataset):
    root = small_dataset
    files = json.loads((root / "world.json").read_text())["files"]["eval"]
    for name, paths in files.items():
        questions = read_jsonl(root / paths["questions"])
        truth = read_jsonl(root / paths["truth"])
        assert questions, name
        for q in questions:
            assert set(q) == {"question_id", "image", "text", "category"}
            assert (root / "images" / q["image"]).is_file()
        assert [q["question_id"] for q in questions] == [t["question_id"] for t in truth]
        assert len({q["question_id"] for q in questions}) == len(questions)
    pope = read_jsonl(root / files["pope"]["truth"])
    for split in ("random", "popular", "adversarial"):
        labels = [r["label"] for r in pope if r["category"] == split]
        assert labels.count("yes") == labels.count("no") > 0
