"""A local stand-in for huggingface.co: the endpoints the huggingface_hub client (2.x) calls to download.

    GET  /api/models/ORG/REPO[/revision/REV]?blobs=True   model_info(files_metadata=True): the commit, and
                                                           siblings with size, blobId and lfs {sha256, size}
    HEAD /ORG/REPO/resolve/REV/PATH                        file metadata: X-Repo-Commit, ETag (git blob id)
                                                           for small files; for LFS files a 302 to the
                                                           "CDN" with X-Linked-Etag (the sha256) and
                                                           X-Linked-Size, as the Hub answers
    GET  /ORG/REPO/resolve/REV/PATH                        a small file's bytes
    GET  /cdn/SHA256                                       an LFS file's bytes, with Range requests (206)

The CDN is addressed as http://localhost:PORT while the API is http://127.0.0.1:PORT: another origin, so the
client takes the metadata from the 302 itself, as it does with the real Hub, instead of following it.
Errors carry the Hub's X-Error-Code headers (RepoNotFound, GatedRepo, RevisionNotFound, EntryNotFound),
which is what the client turns into its exception types. Not a test module: the tests import it.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

VALID_TOKEN = "hf_" + "a" * 37


@dataclass
class ServedFile:
    data: bytes | Path
    sha256: str  # what the API and the ETag say (a lying server says something else)
    git_sha1: str
    size: int
    lfs: bool

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        if isinstance(self.data, bytes):
            return self.data[start:end]
        with open(self.data, "rb") as f:
            f.seek(start)
            return f.read((end if end is not None else self.size) - start)


@dataclass
class Repo:
    commit: str
    files: dict[str, ServedFile]
    gated: bool = False


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Range header)
    cut: dict[str, str] = field(default_factory=dict)  # sha256 -> "once" (cut the next GET in half) or "fail"
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_repo(
        self, repo: str, files: dict[str, bytes | Path], *, gated: bool = False, lie_about: tuple[str, ...] = ()
    ) -> Repo:
        """Serve `files` as the repo's main branch. Files over 1 KiB, and weights, are LFS files. `lie_about`:
        paths whose sha256 the server announces wrongly (the bytes it sends are the real ones)."""
        served = {}
        for path, data in files.items():
            content = data if isinstance(data, bytes) else None
            size = len(data) if isinstance(data, bytes) else Path(data).stat().st_size
            sha = hashlib.sha256(content).hexdigest() if content is not None else _sha256_file(Path(data))
            lfs = size > 1024 or path.endswith((".gguf", ".safetensors", ".bin"))
            if path in lie_about:
                sha = hashlib.sha256(sha.encode()).hexdigest()
            small = content if content is not None else Path(data).read_bytes() if not lfs else b""
            git = _git_blob_id(f"lfs pointer {sha}".encode() if lfs else small)
            served[path] = ServedFile(data, sha, git, size, lfs)
        commit = hashlib.sha1(repo.encode() + b"".join(f.sha256.encode() for f in served.values())).hexdigest()
        self.repos[repo.lower()] = Repo(commit, served, gated)
        return self.repos[repo.lower()]

    def downloads(self) -> list[str]:
        """The paths of the file transfers seen so far: GETs of small files and of the CDN, not metadata, and not
        the resolve GETs that only redirect an LFS file to the CDN."""
        return [
            p
            for m, p, _ in self.requests
            if m == "GET"
            and not p.startswith("/api/")
            and not (p.startswith("/") and "/resolve/" in p and self._lfs(p))
        ]

    def _lfs(self, resolve_path: str) -> bool:
        repo, _, rest = resolve_path.lstrip("/").partition("/resolve/")
        file = rest.partition("/")[2]
        served = self.repos.get(repo.lower())
        return bool(served and file in served.files and served.files[file].lfs)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def start(hub: FakeHub) -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    hub.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Handler(http.server.BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._route(send_body=True)

    def do_HEAD(self) -> None:
        self._route(send_body=False)

    # -- routing ---------------------------------------------------------------------------------------
    def _route(self, send_body: bool) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        self.hub.requests.append((self.command, path, self.headers.get("Range", "")))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path):
            return self._model_info(m[1], m[2])
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(m[1], m[2], m[3], send_body)
        if m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
            return self._cdn(m[1], send_body)
        self._error(404, "", "Not found")

    def _repo(self, repo_id: str, revision: str | None) -> Repo | None:
        repo = self.hub.repos.get(repo_id.lower())
        if repo is None:
            # The Hub answers 401 (not 404) to an anonymous client asking for a repo it cannot see.
            self._error(401, "RepoNotFound", "Repository not found")
            return None
        if revision not in (None, "main", repo.commit):
            self._error(404, "RevisionNotFound", "Invalid rev id: " + str(revision), commit=None)
            return None
        return repo

    def _model_info(self, repo_id: str, revision: str | None) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        siblings = []
        for path, f in repo.files.items():
            sibling = {"rfilename": path, "size": f.size, "blobId": f.git_sha1}
            if f.lfs:
                sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            siblings.append(sibling)
        body = {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "gated": "manual" if repo.gated else False}
        body["private"], body["siblings"] = False, siblings
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo_id: str, revision: str, path: str, send_body: bool) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        if repo.gated and self.headers.get("Authorization") != f"Bearer {VALID_TOKEN}":
            message = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            return self._error(401, "GatedRepo", message, commit=repo.commit)
        f = repo.files.get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on main", commit=repo.commit)
        headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if f.lfs:  # the Hub sends LFS files from its CDN: the 302 itself carries the file's metadata
            cdn = f"http://localhost:{self.hub.port}/cdn/{f.sha256}"
            headers |= {"Location": cdn, "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)}
            headers["ETag"] = f'W/"{f.git_sha1}"'
            return self._send(302, b"", headers, send_body)
        headers["ETag"] = f'"{f.git_sha1}"'
        self._send(200, f.read(), headers, send_body)

    def _cdn(self, sha: str, send_body: bool) -> None:
        f = next((f for r in self.hub.repos.values() for f in r.files.values() if f.sha256 == sha), None)
        if f is None:
            return self._error(404, "", "no such object")
        mode = self.hub.cut.get(sha)
        if mode == "fail":
            return self._error(500, "", "Internal Error")
        start = 0
        if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
            start = int(m[1])
        headers = {"ETag": f'"{sha}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{f.size - 1}/{f.size}"
        if mode in ("once", "then fail") and send_body and not start:
            # Announce the whole file, send half of it, then drop the connection.
            self.hub.cut[sha] = "fail" if mode == "then fail" else "done"
            self.send_response(200)
            for k, v in {**headers, "Content-Length": str(f.size)}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(f.read(0, f.size // 2))
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(206 if start else 200, f.read(start), headers, send_body)

    # -- answers ---------------------------------------------------------------------------------------
    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _send(self, status: int, body: bytes, headers: dict, send_body: bool = True) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body and body:
            self.wfile.write(body)
