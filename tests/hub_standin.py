"""A local stand-in of the Hugging Face Hub for tests: a small threaded HTTP server on
127.0.0.1 that answers the endpoints huggingface_hub 2.4 and datasets 5.2 call, so the real
loading code (``datasets.load_dataset``, ``hf_hub_download``, ``HfFileSystem``, lm-eval's task
download) runs against repos the test describes, through ``HF_ENDPOINT``.

What it implements (read from huggingface_hub's ``hf_api.py``, ``file_download.py``,
``hf_file_system.py``, ``utils/_http.py`` and datasets' ``load.py``):

- ``GET /api/{datasets,models}/{repo}[/revision/{rev}]``: repo info (``id``, ``sha``,
  ``siblings``, ``gated``, ``private``, ``cardData`` from the README front matter).
- ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]`` (``recursive``, ``expand``): the entries
  under a folder, files with ``oid``/``size`` (and ``lfs`` for parquet/binary files).
- ``POST /api/{type}s/{repo}/paths-info/{rev}`` (form field ``paths``): entries of those paths.
- ``HEAD``/``GET /datasets/{repo}/resolve/{rev}/{file}`` and ``/{repo}/resolve/{rev}/{file}``
  (models): the bytes, with ``X-Repo-Commit``, ``ETag``, ``Content-Length`` and for LFS files
  ``X-Linked-Etag`` / ``X-Linked-Size``; ``Range`` requests.
- Revisions by name (``main``, ``refs/convert/parquet``, URL-encoded as the client sends
  them) or by commit sha; a renamed repo's old id answers with a 307 redirect to the new one,
  as the hub does for ``xnli`` -> ``facebook/xnli``.
- Errors as the hub sends them: 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound``
  / ``EntryNotFound``; a gated repo without a token: 401 ``GatedRepo`` on its files.

Uploads (what ``create_repo`` and ``create_commit`` send): ``POST /api/validate-yaml`` (a README's
metadata: YAML mapping, base_model a hub id, language codes, model-index shape; 400 with the
errors otherwise), ``POST /api/repos/create`` (a token
is required: 401 without one; 409 when the repo exists), ``POST /api/{type}s/{repo}/preupload/{rev}``
(every file is answered ``regular``, so nothing goes through LFS or xet) and ``POST
/api/{type}s/{repo}/commit/{rev}`` (the ndjson body: header, ``file`` lines with base64 content,
``deletedFile``), which makes a new revision of the branch in one step.  ``hub.commits`` logs
(repo_id, summary, paths) of every commit; a private repo answers 404 without a token, as the hub
does.

Not implemented: LFS/xet uploads, pagination of long listings, the dataset viewer API (datasets
asks ``datasets-server.<endpoint host>``, which does not resolve: it treats that as "no parquet
export", as it would for a repo the viewer has not processed).

The server binds 127.0.0.1 only, on a free port, serves at most ``max_requests`` requests and
stops by itself after ``idle_timeout`` seconds without a request (or on ``stop()``).
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

LFS_SUFFIXES = (".parquet", ".arrow", ".safetensors", ".bin", ".gz", ".zip")


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def front_matter(readme: str) -> dict[str, Any]:
    m = re.match(r"^---\n(.*?)\n---\n", readme, re.S)
    return (yaml.safe_load(m.group(1)) or {}) if m else {}


def readme(configs: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None, body: str = "") -> bytes:
    """A dataset card: YAML front matter (``configs:`` as the hub's cards write it) and a body."""
    meta = dict(extra or {})
    if configs is not None:
        meta["configs"] = configs
    return ("---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n" + body).encode()


def parquet_bytes(rows: list[dict[str, Any]], features=None) -> bytes:
    """Rows as a parquet file written by ``datasets`` (so ClassLabel / Sequence features and the
    ``huggingface`` schema metadata are the ones the hub's converted files carry)."""
    import datasets

    ds = datasets.Dataset.from_list(rows, features=features)
    buf = io.BytesIO()
    ds.to_parquet(buf)
    return buf.getvalue()


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def csv_bytes(rows: list[dict[str, Any]], sep: str = ",") -> bytes:
    import csv

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter=sep, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


@dataclass
class Repo:
    repo_id: str
    repo_type: str = "dataset"  # dataset | model
    revisions: dict[str, dict[str, bytes]] = field(default_factory=dict)  # ref name -> {path: bytes}
    gated: bool = False
    private: bool = False

    def sha(self, ref: str) -> str:
        if re.fullmatch(r"[0-9a-f]{40}", ref):  # a revision added under its commit sha
            return ref
        h = hashlib.sha1(f"{self.repo_type}/{self.repo_id}@{ref}".encode())
        for path, data in sorted(self.revisions[ref].items()):
            h.update(path.encode() + b"\0" + hashlib.sha1(data).digest())
        return h.hexdigest()

    def resolve(self, rev: str) -> str | None:
        """The ref name a revision (name or commit sha) points to, or None."""
        if rev in self.revisions:
            return rev
        for ref in self.revisions:
            if self.sha(ref) == rev:
                return ref
        return None


class HubStandin:
    """``hub = HubStandin(); hub.add_dataset("facebook/xnli", {...}); with hub: ...``;
    ``hub.url`` goes to ``HF_ENDPOINT``; ``hub.requests`` logs (method, path) of every call."""

    def __init__(self, max_requests: int = 20000, idle_timeout: float = 900.0):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.aliases: dict[tuple[str, str], str] = {}
        self.requests: list[tuple[str, str]] = []
        self.commits: list[tuple[str, str, list[str]]] = []  # (repo_id, summary, paths) of every commit
        self.max_requests = max_requests
        self.idle_timeout = idle_timeout
        self._server: ThreadingHTTPServer | None = None
        self._last = time.monotonic()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ repos
    def add_repo(self, repo_id: str, files: dict[str, bytes | str], repo_type: str = "dataset",
                 revision: str = "main", gated: bool = False) -> Repo:
        key = (repo_type, repo_id)
        repo = self.repos.get(key) or Repo(repo_id, repo_type, gated=gated)
        repo.gated = repo.gated or gated
        repo.revisions[revision] = {p: (d.encode() if isinstance(d, str) else d) for p, d in files.items()}
        repo.revisions[revision].setdefault(".gitattributes", b"*.parquet filter=lfs diff=lfs merge=lfs -text\n")
        self.repos[key] = repo
        return repo

    def add_dataset(self, repo_id: str, files: dict[str, bytes | str], **kw) -> Repo:
        return self.add_repo(repo_id, files, "dataset", **kw)

    def add_model(self, repo_id: str, files: dict[str, bytes | str], **kw) -> Repo:
        return self.add_repo(repo_id, files, "model", **kw)

    def alias(self, old_id: str, new_id: str, repo_type: str = "dataset") -> None:
        """An old repo id the hub redirects to its new one (``xnli`` -> ``facebook/xnli``)."""
        self.aliases[(repo_type, old_id)] = new_id

    def sha(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> str:
        return self.repos[(repo_type, repo_id)].sha(revision)

    # ------------------------------------------------------------------ server
    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubStandin:
        hub = self

        class Handler(_Handler):
            standin = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._last = time.monotonic()
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        threading.Thread(target=self._watchdog, daemon=True).start()
        return self

    def _watchdog(self) -> None:
        while self._server is not None:
            time.sleep(1.0)
            if time.monotonic() - self._last > self.idle_timeout or len(self.requests) > self.max_requests:
                self.stop()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> HubStandin:
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def touched(self, repo_id: str) -> bool:
        """Whether any request named this repo."""
        return any(f"/{repo_id}/" in p or p.endswith(f"/{repo_id}") for _, p in self.requests)


_API = re.compile(r"^/api/(datasets|models)/(.+?)(?:/(revision|tree|paths-info|preupload|commit)/([^/]+)(?:/(.*))?)?$")
_CREATE = "/api/repos/create"
_VALIDATE = "/api/validate-yaml"
_RESOLVE = re.compile(r"^/(?:(datasets)/)?(.+?)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    standin: HubStandin
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -------------------------------------------------------------- helpers
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _repo(self, repo_type: str, repo_id: str) -> Repo | str | None:
        """The repo, or the new id of a renamed one (str), or None."""
        repo = self.standin.repos.get((repo_type, repo_id))
        if repo is not None:
            return repo
        return self.standin.aliases.get((repo_type, repo_id))

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer ")

    @staticmethod
    def _entry(path: str, data: bytes) -> dict[str, Any]:
        e: dict[str, Any] = {"type": "file", "oid": _git_blob_sha(data), "size": len(data), "path": path}
        if path.endswith(LFS_SUFFIXES):
            e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return e

    @staticmethod
    def _folder(path: str) -> dict[str, Any]:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}

    # -------------------------------------------------------------- dispatch
    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        st = self.standin
        st._last = time.monotonic()
        raw_path, _, query = self.path.partition("?")
        with st._lock:
            st.requests.append((self.command, urllib.parse.unquote(raw_path)))
        try:
            if raw_path == _CREATE and self.command == "POST":
                return self._create_repo()
            if raw_path == _VALIDATE and self.command == "POST":
                return self._validate_yaml()
            if m := _API.match(raw_path):
                return self._api(m, urllib.parse.parse_qs(query))
            if m := _RESOLVE.match(raw_path):
                return self._resolve(m)
            self._error(404, None, f"no such endpoint: {raw_path}")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _api(self, m: re.Match, query: dict[str, list[str]]) -> None:
        kind, repo_id, op, rev, sub = m.groups()
        repo_type = kind[:-1]
        repo_id = urllib.parse.unquote(repo_id)
        repo = self._repo(repo_type, repo_id)
        if isinstance(repo, str):  # renamed: the hub redirects
            target = self.path.replace(f"/api/{kind}/{m.group(2)}", f"/api/{kind}/{repo}", 1)
            return self._send(307, b"", {"Location": target})
        if repo is None or (repo.private and not self._authorized()):
            return self._error(404, "RepoNotFound", f"Repository not found: {repo_type} {repo_id}")
        if op in ("preupload", "commit"):
            if not self._authorized():
                return self._error(401, None, "Invalid credentials in Authorization header")
            return self._preupload() if op == "preupload" else self._commit(repo, urllib.parse.unquote(rev))
        rev = urllib.parse.unquote(rev or "main")
        ref = repo.resolve(rev)
        if ref is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files = repo.revisions[ref]
        if op in (None, "revision"):
            return self._info(repo, repo_type, ref, files)
        if op == "tree":
            return self._tree(ref, files, urllib.parse.unquote(sub or "").strip("/"),
                              (query.get("recursive") or ["false"])[0].lower() == "true")
        return self._paths_info(files)

    # -------------------------------------------------------------- uploads
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _create_repo(self) -> None:
        body = json.loads(self._body() or b"{}")
        if not self._authorized():
            return self._error(401, None, "Invalid credentials in Authorization header")
        repo_type = body.get("type") or "model"
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        if (repo_type, repo_id) in self.standin.repos:
            return self._error(409, None, "You already created this model repo")
        repo = self.standin.add_repo(repo_id, {}, repo_type)
        repo.private = body.get("visibility") == "private" or bool(body.get("private"))
        self._send(200, json.dumps({"url": f"{self.standin.url}/{prefix}{repo_id}", "name": repo_id}).encode())

    def _validate_yaml(self) -> None:
        """The checks of the hub's README metadata validation that a card writer can get wrong:
        YAML that parses to a mapping, a base_model that is a hub id (not a local path), a
        language code, a model-index with name and results."""
        content = json.loads(self._body() or b"{}").get("content", "")
        meta = front_matter(content) if content.startswith("---") else {}
        errors = []
        if not isinstance(meta, dict):
            errors.append("metadata is not a mapping")
            meta = {}
        for bm in ([meta["base_model"]] if isinstance(meta.get("base_model"), str) else meta.get("base_model") or []):
            if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(bm)):
                errors.append(f'"base_model" must be a hub model id, got {bm!r}')
        for lang in ([meta["language"]] if isinstance(meta.get("language"), str) else meta.get("language") or []):
            if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]+)?", str(lang)):
                errors.append(f'"language" {lang!r} is not a language code')
        for entry in meta.get("model-index") or []:
            if not entry.get("name") or not isinstance(entry.get("results"), list):
                errors.append('"model-index" entries need a name and results')
        status = 400 if errors else 200
        self._send(status, json.dumps({"errors": [{"message": e} for e in errors], "warnings": []}).encode())

    def _preupload(self) -> None:
        files = json.loads(self._body() or b"{}").get("files", [])
        out = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
        self._send(200, json.dumps({"files": out, "commitOid": None}).encode())

    def _commit(self, repo: Repo, rev: str) -> None:
        import base64

        ref = repo.resolve(rev) or rev
        files = dict(repo.revisions.get(ref, {}))
        summary, paths = "", []
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                raw = value["content"]
                files[value["path"]] = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                paths.append(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            else:
                return self._error(400, None, f"the stand-in does not implement commit items of kind {key!r}")
        repo.revisions[ref] = files
        self.standin.commits.append((repo.repo_id, summary, paths))
        sha = repo.sha(ref)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._send(200, json.dumps({"commitUrl": f"{self.standin.url}/{prefix}{repo.repo_id}/commit/{sha}", "commitOid": sha,
                                    "success": True}).encode())

    def _info(self, repo: Repo, repo_type: str, ref: str, files: dict[str, bytes]) -> None:
        card = files.get("README.md")
        sha = repo.sha(ref)
        info = {"_id": sha[:24], "id": repo.repo_id, "sha": sha, "private": repo.private,
                "gated": "auto" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": [], "lastModified": "2025-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": p} for p in sorted(files)],
                "cardData": front_matter(card.decode()) if card else {}}
        if repo_type == "model":
            info["modelId"] = repo.repo_id
        return self._send(200, json.dumps(info).encode())

    def _tree(self, ref: str, files: dict[str, bytes], prefix: str, recursive: bool) -> None:
        entries, folders = [], set()
        for path in sorted(files):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1:] if prefix else path
            parts = rest.split("/")
            for i in range(1, len(parts)):
                folder = "/".join(([prefix] if prefix else []) + parts[:i])
                if (recursive or i == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append(self._folder(folder))
            if recursive or len(parts) == 1:
                entries.append(self._entry(path, files[path]))
        if prefix and not entries:
            return self._error(404, "EntryNotFound", f"{prefix} does not exist on {ref}")
        return self._send(200, json.dumps(entries).encode())

    def _paths_info(self, files: dict[str, bytes]) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        form = urllib.parse.parse_qs(body)
        if self.headers.get("Content-Type", "").startswith("application/json"):
            form = {"paths": json.loads(body or "{}").get("paths", [])}
        out = []
        dirs = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in files:
                out.append(self._entry(path, files[path]))
            elif path in dirs or path == "":
                out.append(self._folder(path))
        return self._send(200, json.dumps(out).encode())

    def _resolve(self, m: re.Match) -> None:
        kind, repo_id, rev, path = m.groups()
        repo_type = "dataset" if kind else "model"
        repo_id = urllib.parse.unquote(repo_id)
        repo = self._repo(repo_type, repo_id)
        if isinstance(repo, str):
            prefix = "/datasets/" if kind else "/"
            target = self.path.replace(f"{prefix}{m.group(2)}/resolve/", f"{prefix}{repo}/resolve/", 1)
            return self._send(307, b"", {"Location": target})
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository not found: {repo_type} {repo_id}")
        rev = urllib.parse.unquote(rev)
        ref = repo.resolve(rev)
        if ref is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if repo.gated and not self._authorized():
            return self._error(401, "GatedRepo", f"Access to {repo_type} {repo_id} is restricted. You must have "
                               "access to it and be authenticated to access it. Please log in.")
        path = urllib.parse.unquote(path)
        files = repo.revisions[ref]
        if path not in files:
            return self._error(404, "EntryNotFound", f"{path} does not exist on \"{ref}\"")
        data = files[path]
        etag = hashlib.sha256(data).hexdigest() if path.endswith(LFS_SUFFIXES) else _git_blob_sha(data)
        headers = {"X-Repo-Commit": repo.sha(ref), "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Last-Modified": email.utils.formatdate(0, usegmt=True)}
        if path.endswith(LFS_SUFFIXES):
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        status = 200
        rng = self.headers.get("Range")
        if rng and (rm := re.match(r"bytes=(\d*)-(\d*)$", rng.strip())):
            start = int(rm.group(1)) if rm.group(1) else max(0, len(data) - int(rm.group(2)))
            end = int(rm.group(2)) if rm.group(1) and rm.group(2) else len(data) - 1
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        self._send(status, data, headers, content_type="application/octet-stream")
