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
