"""A minimal Hugging Face Hub file server on 127.0.0.1, for tests through huggingface_hub's real code.

It answers ``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}`` the way the Hub does (commit
and ETag headers, and the ``X-Error-Code`` that huggingface_hub turns into its typed errors).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _handler(repos: dict[str, Path], log: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            log.append(f"{self.command} {self.path}")

        def _error(self, code: str) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _serve(self, body: bool) -> None:
            parts = unquote(self.path.split("?")[0]).strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                self._error("RepoNotFound")
                return
            repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if repo_id not in repos:
                self._error("RepoNotFound")
                return
            if revision not in ("main", COMMIT):
                self._error("RevisionNotFound")
                return
            path = repos[repo_id] / filename
            if not path.is_file():
                self._error("EntryNotFound")
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

    return Handler


@contextmanager
def serve_hub(repos: dict[str, Path]) -> Iterator[tuple[str, list[str]]]:
    """Serve ``{repo_id: folder}``; yields the endpoint URL and the request log."""
    log: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(repos, log))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
