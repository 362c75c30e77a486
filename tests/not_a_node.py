"""A real HTTP server that is not a p2pnode, for the CLI's error tests:
`python -m tests.not_a_node`.

It prints its port, then answers every request from its path `/STATUS/KIND/...`: KIND `html` is an
HTML page, `text` a plain-text line, `empty` nothing, `json` a JSON object of another API, `detail`
FastAPI's validation-error shape, and `garbage` is not HTTP at all.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODIES = {
    "html": ("text/html", b"<!DOCTYPE html>\n<html><body><h1>502 Bad Gateway</h1></body></html>\n"),
    "text": ("text/plain", b"Bad Gateway\nupstream went away\n"),
    "empty": ("text/plain", b""),
    "json": ("application/json", json.dumps({"weather": "sunny"}).encode()),
    "detail": (
        "application/json",
        json.dumps({"detail": [{"loc": ["body", "path"], "msg": "Field required"}]}).encode(),
    ),
}


class Handler(BaseHTTPRequestHandler):
    def answer(self) -> None:
        status, kind = (self.path.strip("/").split("/") + ["", ""])[:2]
        if kind == "garbage":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")
            return
        content_type, body = BODIES[kind]
        self.send_response(int(status))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = answer

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
