"""A minimal Hugging Face Hub server on 127.0.0.1, for tests through huggingface_hub's real code.

Downloads: ``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}`` as the Hub answers them (commit
and ETag headers, and the ``X-Error-Code`` that huggingface_hub turns into its typed errors).
Uploads: ``create_repo`` and ``upload_folder`` (repo creation, model-card YAML validation,
preupload asking for "regular" uploads, and the NDJSON commit), stored so they can be downloaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _handler(repos: dict[str, Path], log: list[str], uploads: Path | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            log.append(f"{self.command} {self.path}")

        def _json(self, obj: object, code: int = 200) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            endpoint = f"http://{self.headers['Host']}"
            if self.headers.get("Authorization") is None or uploads is None:
                self._json({"error": "unauthorized"}, 401)
                return
            if self.path == "/api/repos/create":
                req = json.loads(body)
                repo_id = f"{req['organization']}/{req['name']}"
                repos.setdefault(repo_id, uploads / repo_id).mkdir(parents=True, exist_ok=True)
                self._json({"url": f"{endpoint}/{repo_id}"})
            elif self.path == "/api/validate-yaml":
                self._json({"errors": [], "warnings": []})
            elif "/preupload/" in self.path:
                files = json.loads(body)["files"]
                self._json(
                    {
                        "files": [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                        ]
                    }
                )
            elif "/commit/" in self.path:
                repo_id = self.path.split("/api/models/", 1)[1].split("/commit/", 1)[0]
                for line in body.decode().splitlines():
                    entry = json.loads(line)
                    if entry["key"] == "file":
                        value = entry["value"]
                        target = repos[repo_id] / value["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(base64.b64decode(value["content"]))
                self._json(
                    {
                        "commitUrl": f"{endpoint}/{repo_id}/commit/{COMMIT}",
                        "commitOid": COMMIT,
                        "pullRequestUrl": None,
                    }
                )
            else:
                self._json({"error": "not found"}, 404)

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
def serve_hub(repos: dict[str, Path], uploads: Path | None = None) -> Iterator[tuple[str, list[str]]]:
    """Serve ``{repo_id: folder}`` (uploads land under ``uploads``); yields the URL and request log."""
    log: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(repos, log, uploads))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
