"""A tiny OpenAI-compatible chat-completions server on 127.0.0.1 that replays a fixture's canned replies."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from eval_helpers import ReplayJudge


class ReplayServer:
    """Serves ``POST /v1/chat/completions``; ``status`` forces an error status; ``payloads`` logs requests."""

    def __init__(self, judge: ReplayJudge | None = None, status: int = 200) -> None:
        self.judge, self.status = judge, status
        self.payloads: list[dict] = []
        self.headers: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.payloads.append(body)
                server.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions" or server.status != 200:
                    self.send_response(server.status if server.status != 200 else 404)
                    self.end_headers()
                    return
                reply = server.judge.reply_for(body["messages"][-1]["content"])
                data = json.dumps(
                    {
                        "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ReplayServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
