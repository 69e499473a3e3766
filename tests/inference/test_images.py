"""Image sources and their policy: data URLs, local paths inside allowed folders, remote fetching."""

from __future__ import annotations

import base64
import http.server
import threading

import pytest

from aligngpt.inference.images import ImageError, ImagePolicy, list_images, load_image
from tests.inference.conftest import data_url, png_bytes


def test_data_url_decodes_to_rgb():
    image = load_image(data_url(png_bytes((7, 5), mode="L")))
    assert image.size == (7, 5) and image.mode == "RGB"


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("data:image/png;base64,@@@not-base64@@@", "invalid_base64"),
        ("data:image/png;base64," + base64.b64encode(b"certainly not a png").decode(), "invalid_image"),
        ("data:image/png," + "abc", "invalid_image_url"),
        ("data:image/png;base64," + base64.b64encode(png_bytes()[:40]).decode(), "invalid_image"),  # truncated
        ("ftp://example.org/x.png", "invalid_image_url"),
    ],
)
def test_bad_sources_raise_image_errors(source, code):
    with pytest.raises(ImageError) as err:
        load_image(source)
    assert err.value.code == code and err.value.status == 400


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageError) as err:
        load_image(data_url(png_bytes((300, 200))), ImagePolicy(max_pixels=300 * 200 - 1))
    assert err.value.code == "image_too_large"
    assert load_image(data_url(png_bytes((300, 200))), ImagePolicy(max_pixels=300 * 200)).size == (300, 200)


def test_local_files_only_inside_allowed_folders(tmp_path):
    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    (allowed / "ok.png").write_bytes(png_bytes())
    (secret / "no.png").write_bytes(png_bytes())
    (allowed / "link.png").symlink_to(secret / "no.png")
    policy = ImagePolicy(allow_dirs=(allowed,))
    assert load_image(str(allowed / "ok.png"), policy).size == (40, 30)
    assert load_image("ok.png", policy).size == (40, 30)  # relative to the allowed folder
    assert load_image((allowed / "ok.png").as_uri(), policy).size == (40, 30)
    for escape in (str(secret / "no.png"), str(allowed / ".." / "secret" / "no.png"), str(allowed / "link.png")):
        with pytest.raises(ImageError) as err:
            load_image(escape, policy)
        assert err.value.status == 403, escape
    with pytest.raises(ImageError) as err:
        load_image(str(allowed / "ok.png"), ImagePolicy(allow_dirs=()))
    assert err.value.code == "local_files_disabled"
    with pytest.raises(ImageError) as err:
        load_image("missing.png", policy)
    assert err.value.code == "image_not_found"


@pytest.fixture
def image_http_server():
    """A loopback HTTP server answering /img.png with a PNG and 404 otherwise."""
    body = png_bytes((9, 9))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/img.png"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(body) if ok else 0))
            self.end_headers()
            if ok:
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_images_need_permission_and_respect_limits(image_http_server):
    url = f"{image_http_server}/img.png"
    with pytest.raises(ImageError) as err:
        load_image(url, ImagePolicy(allow_remote=False))
    assert err.value.code == "remote_images_disabled" and err.value.status == 403
    assert load_image(url, ImagePolicy(allow_remote=True)).size == (9, 9)
    with pytest.raises(ImageError) as err:
        load_image(f"{image_http_server}/missing.png", ImagePolicy(allow_remote=True))
    assert err.value.code == "image_fetch_failed"
    with pytest.raises(ImageError) as err:
        load_image(url, ImagePolicy(allow_remote=True, max_bytes=10))
    assert err.value.code == "image_too_large"


def test_list_images_sorted_and_filtered(tmp_path):
    for name in ("b.PNG", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]


def _transparent_images() -> dict:
    """RGBA, LA and palette-with-transparency images whose transparent pixels hide a colour (so dropping the alpha
    channel and compositing it give different pixels)."""
    from PIL import Image

    rgba = Image.new("RGBA", (24, 16), (0, 0, 255, 0))
    rgba.paste((200, 40, 40, 255), (0, 0, 12, 16))
    rgba.paste((40, 200, 40, 128), (12, 0, 18, 16))
    la = Image.new("LA", (20, 20), (10, 0))
    la.paste((180, 255), (0, 0, 10, 20))
    palette = Image.new("P", (16, 24), 0)
    palette.putpalette([0, 0, 0, 250, 120, 0] + [0, 0, 0] * 254)
    palette.paste(1, (0, 0, 16, 12))
    palette.info["transparency"] = 0
    return {"rgba": rgba, "la": la, "palette": palette}


def test_transparent_images_give_the_same_pixels_in_training_predict_eval_and_server(pipeline, tmp_path, monkeypatch):
    import json

    import torch
    from fastapi.testclient import TestClient

    from aligngpt.data.dataset import TrainingDataset
    from aligngpt.data.images import to_rgb
    from aligngpt.evaluation.benchmarks import get_benchmark
    from aligngpt.evaluation.items import EvalItem
    from aligngpt.inference import GenerationSettings
    from aligngpt.inference.answers import answer_tasks, run_identity
    from aligngpt.inference.predict import predict_file
    from aligngpt.inference.server import ServerConfig, create_app
    from aligngpt.processing import AlignGPTProcessor

    images = _transparent_images()
    folder = tmp_path / "images"
    folder.mkdir()
    for name, image in images.items():
        image.save(folder / f"{name}.png")
    processor = pipeline.processor
    seen: list[torch.Tensor] = []
    original = AlignGPTProcessor.preprocess_images

    def spy(self, batch, aspect_ratio=None):
        pixels = original(self, batch, aspect_ratio)
        seen.extend(pixels)
        return pixels

    monkeypatch.setattr(AlignGPTProcessor, "preprocess_images", spy)
    settings = GenerationSettings(max_new_tokens=1)
    bench = get_benchmark("pope")  # an eval benchmark that pads, like training and the server
    identity = run_identity(None, None, "tiny", pipeline.template.name, settings)
    padding = {"aspect_ratio": bench.image_aspect_ratio, "progress": False}
    for name, image in images.items():
        reference = original(processor, [to_rgb(image)], "pad")[0]
        dropped_alpha = original(processor, [image.convert("RGB")], "pad")[0]
        assert not torch.equal(reference, dropped_alpha), "the test image must depend on its transparency"
        turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "It."}]
        record = {"id": name, "image": f"{name}.png", "conversations": turns}
        data = tmp_path / f"{name}.json"
        data.write_text(json.dumps([record]))
        seen.clear()
        training = TrainingDataset(data, processor, "finetune", folder, image_aspect_ratio="pad")[0].pixel_values

        questions = tmp_path / f"{name}.jsonl"
        questions.write_text(json.dumps({"question_id": 1, "image": f"{name}.png", "text": "What?"}) + "\n")
        seen.clear()
        predict_file(pipeline, questions, tmp_path / f"{name}.answers.jsonl", folder, settings, progress=False)
        predicted = seen[-1]

        seen.clear()
        item = EvalItem(1, folder / f"{name}.png", "What?")
        answer_tasks(pipeline, [item.task()], tmp_path / name / "answers.jsonl", settings, identity, **padding)
        evaluated = seen[-1]
        embedded = EvalItem(2, None, "What?", {"image_base64": base64.b64encode((folder / f"{name}.png").read_bytes())})
        seen.clear()
        answer_tasks(pipeline, [embedded.task()], tmp_path / name / "more.jsonl", settings, identity, **padding)
        evaluated_base64 = seen[-1]

        seen.clear()
        message = {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url((folder / f"{name}.png").read_bytes())}},
            {"type": "text", "text": "What?"}]}  # fmt: skip
        with TestClient(create_app(pipeline, ServerConfig(model_name="tiny"))) as client:
            response = client.post("/v1/chat/completions", json={"messages": [message], "max_tokens": 1})
        assert response.status_code == 200, response.text
        served = seen[-1]

        for path, pixels in [("training", training), ("predict", predicted), ("eval", evaluated),
                             ("eval (base64)", evaluated_base64), ("server", served)]:  # fmt: skip
            assert torch.equal(pixels, reference), f"{name}: {path} sees other pixels than training's loader"
