"""Models from the Hugging Face Hub: which files of a repository make a model, fetched and checked.

    hf:ORG/REPO                 a GGUF repo: its Q4_K_M file (else Q8_0, else the first); a safetensors repo:
                                the model folder (config, tokenizer, chat template, *.safetensors)
    hf:ORG/REPO:QUANT           the GGUF file with that quant tag (Q4_K_M, q8_0, IQ4_XS..., any case)
    hf:ORG/REPO/FILE.gguf       that file (a split GGUF's first part brings all its parts)
    hf:ORG/REPO@REVISION        a branch, tag or commit instead of main (combines with the forms above)

The quant tag is picked as llama.cpp's `-hf` and Ollama's `hf.co/ORG/REPO:TAG` pick it: the tag of a file is
the last `-` or `.` separated word of its name (`Llama-3.2-1B-Instruct-Q4_K_M.gguf` -> Q4_K_M), compared
without case. A tag that names no file, or several, is an error that lists the tags there are.

Downloads go through the `huggingface_hub` client into its own cache ($HF_HUB_CACHE, else $HF_HOME/hub,
else ~/.cache/huggingface/hub), so a model transformers or llama.cpp already fetched is not fetched again
and one fetched here is theirs too; the store (store.py) keeps a manifest and links to the cached files.
The client brings HF_TOKEN (gated and private repos), HF_ENDPOINT (mirrors), HF_HUB_OFFLINE (cache only)
and its progress bars; a transfer cut midway is resumed where it stopped (an HTTP range request, a few
tries within one pull). Every file is checked against the Hub's hash after download (the sha256 of LFS
files, the git blob id of small ones): a mismatch deletes the file and is an error.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pellucid.errors import ModelFileError, ModelNotFoundError, PellucidError

PREFIXES = ("hf:", "hf.co/", "huggingface.co/", "https://huggingface.co/")
DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")  # what llama.cpp's -hf picks when no tag is given, in this order

# hf:ORG/REPO[/PATH.gguf][@REVISION][:QUANT]
_SPEC = re.compile(
    r"^(?P<repo>[\w.-]+/[\w.-]+)(?:/(?P<file>[^@:]+\.gguf))?(?:@(?P<revision>[^:@]+))?(?::(?P<quant>[\w.-]+))?$",
    re.IGNORECASE,
)
_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})$", re.IGNORECASE)
_TAG = re.compile(r"[-.](?P<tag>[A-Za-z0-9_]+)$")
# GGUF files in model repos that are not the model: vision projectors, importance matrices, and the draft
# heads llama.cpp fetches beside a model (names as llama.cpp's gguf_filename_is_model knows them).
_NOT_A_MODEL = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")

# The files of a safetensors repo pellucid needs: the model's config, its tokenizer in any of the formats
# transformers writes, the chat template, the sentence-transformers stages (rag's embedders and rerankers)
# and the README (inspect reads its license). Weights are *.safetensors (+ index) at the top level only:
# subfolders hold other formats' exports (onnx/, openvino/, gguf/) or training leftovers.
HF_FOLDER_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "spiece.model",
        "sentencepiece.bpe.model",
        "chat_template.jinja",
        "chat_template.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "README.md",
    }
)
# sentence-transformers keeps each stage after the encoder in a folder named N_Kind (1_Pooling, 2_Dense).
_ST_STAGE = re.compile(r"^\d+_[A-Za-z]+/(config\.json|[^/]+\.safetensors)$")
_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


# -- naming a model on the Hub --------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSpec:
    """What an `hf:` MODEL argument asks for."""

    repo: str  # ORG/REPO
    revision: str | None = None  # None = main
    quant: str | None = None  # upper case
    filename: str | None = None  # a path inside the repo

    def __str__(self) -> str:
        text = f"hf:{self.repo}"
        if self.filename:
            text += f"/{self.filename}"
        if self.revision:
            text += f"@{self.revision}"
        if self.quant:
            text += f":{self.quant}"
        return text


def is_hub_spec(spec: str) -> bool:
    return spec.lower().startswith(PREFIXES)


def parse_spec(spec: str) -> HubSpec:
    rest = spec
    for prefix in PREFIXES:
        if rest.lower().startswith(prefix):
            rest = rest[len(prefix) :]
            break
    m = _SPEC.match(rest.strip("/"))
    if m is None:
        raise PellucidError(
            f"{spec!r} is not a Hugging Face model name. Write hf:ORG/REPO (e.g. hf:bartowski/Llama-3.2-1B-Instruct-GGUF), "
            f"with :QUANT to pick a GGUF quantization (hf:ORG/REPO:Q4_K_M), /FILE.gguf to pick a file, or "
            f"@REVISION for a branch, tag or commit (hf:ORG/REPO@main)."
        )
    quant = m["quant"].upper() if m["quant"] else None
    return HubSpec(m["repo"], m["revision"], quant, m["file"])


# -- where the client works -----------------------------------------------------------------------------
# Read from the environment at each call (the client reads them once, at import) so that a test or an
# embedding program can change them; the precedence is the client's own.


def cache_dir() -> Path:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def repo_cache(repo: str) -> Path:
    return cache_dir() / ("models--" + repo.replace("/", "--"))


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds `path` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


# -- what a repository holds ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RepoFile:
    path: str  # inside the repo, with /
    size: int | None = None
    sha256: str | None = None  # LFS files: the Hub's sha256 of the content
    git_sha1: str | None = None  # the git blob id (of the content for small files, of the LFS pointer otherwise)


@dataclass
class RepoListing:
    repo: str
    commit: str  # the revision resolved to a commit: every file is fetched from this one
    files: list[RepoFile]
    from_cache: bool = False  # listed from the local cache (offline), not from the Hub
    requested_revision: str | None = None  # the branch, tag or commit asked for (None = main)


def list_repo(spec: HubSpec) -> RepoListing:
    """The files of the repo at the asked revision, with sizes and hashes: from the Hub, or from the cache
    when HF_HUB_OFFLINE is set or the Hub cannot be reached."""
    if offline():
        cached = cached_listing(spec.repo, spec.revision)
        if cached is None:
            raise PellucidError(
                f"HF_HUB_OFFLINE is set and {spec.repo} is not in the Hugging Face cache ({cache_dir()}). "
                f"Unset HF_HUB_OFFLINE to download it, or pull it where the Hub can be reached."
            )
        return cached
    from huggingface_hub import HfApi

    try:
        with hub_errors(spec.repo, spec.revision):
            info = HfApi(endpoint=endpoint()).model_info(spec.repo, revision=spec.revision, files_metadata=True)
    except _Unreachable as e:
        cached = cached_listing(spec.repo, spec.revision)
        if cached is None:
            raise PellucidError(
                f"{e}, and {spec.repo} is not in the Hugging Face cache ({cache_dir()}). Check the connection "
                f"(and HF_ENDPOINT, if you use a mirror), then pull again."
            ) from None
        print(f"warning: {e}; using the copy in the Hugging Face cache", file=sys.stderr)
        return cached
    files = [
        RepoFile(s.rfilename, s.lfs.size if s.lfs else s.size, s.lfs.sha256 if s.lfs else None, s.blob_id)
        for s in info.siblings or []
    ]
    return RepoListing(info.id or spec.repo, info.sha or spec.revision or "main", files, False, spec.revision)


def cached_listing(repo: str, revision: str | None) -> RepoListing | None:
    """The repo as the cache holds it: the snapshot its ref points at (main, or the asked revision)."""
    root = repo_cache(repo)
    ref = root / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = root / "snapshots" / commit if commit else None
    if snapshot is None or not snapshot.is_dir():
        return None
    files = []
    for path in sorted(snapshot.rglob("*")):
        if not path.is_file():
            continue
        blob = Path(os.path.realpath(path)).name  # the cache names blobs by sha256 (LFS) or git blob id
        files.append(
            RepoFile(
                path.relative_to(snapshot).as_posix(),
                path.stat().st_size,
                sha256=blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None,
                git_sha1=blob if re.fullmatch(r"[0-9a-f]{40}", blob) else None,
            )
        )
    return RepoListing(repo, commit, files, from_cache=True)


# -- which files make the model -------------------------------------------------------------------------


@dataclass
class GGUFModel:
    """One model in a GGUF repo: a single file, or the parts of a split one (in order)."""

    parts: list[RepoFile]
    tag: str  # the quant tag from the name, upper case ("" when the name has none)

    @property
    def path(self) -> str:
        return self.parts[0].path

    @property
    def size(self) -> int:
        return sum(p.size or 0 for p in self.parts)


def gguf_models(files: list[RepoFile]) -> list[GGUFModel]:
    """The models among a repo's GGUF files, split parts grouped, sidecars (mmproj, imatrix...) left out."""
    groups: dict[tuple[str, int], list[tuple[int, RepoFile]]] = {}
    for f in files:
        name = f.path.rsplit("/", 1)[-1].lower()
        if not name.endswith(".gguf") or any(word in name for word in _NOT_A_MODEL):
            continue
        prefix, index, count = split_info(f.path)
        groups.setdefault((prefix, count), []).append((index, f))
    models = []
    for (prefix, count), members in sorted(groups.items()):
        members.sort(key=lambda m: m[0])
        if [i for i, _ in members] != list(range(1, count + 1)):
            continue  # an incomplete split set cannot load
        m = _TAG.search(prefix)
        models.append(GGUFModel([f for _, f in members], m["tag"].upper() if m else ""))
    return models


def split_info(path: str) -> tuple[str, int, int]:
    """(prefix, index, count) of a GGUF path: `X-00002-of-00003.gguf` -> (X, 2, 3); a whole file -> (X, 1, 1)."""
    stem = path[: -len(".gguf")] if path.lower().endswith(".gguf") else path
    m = _SPLIT.match(stem)
    return (m["prefix"], int(m["index"]), int(m["count"])) if m else (stem, 1, 1)


@dataclass
class Selection:
    """The files to fetch for a model, and what it is."""

    kind: str  # "gguf" or "hf"
    files: list[RepoFile]
    main: str  # gguf: the repo path of the (first) file; hf: "" (the repo root is the model folder)
    quant: str | None = None
    note: str | None = None  # said to the user when the choice was pellucid's (no tag given)


def select(listing: RepoListing, spec: HubSpec) -> Selection:
    models = gguf_models(listing.files)
    if spec.filename:
        return _select_file(listing, spec, models)
    if models:
        return _select_quant(listing, spec, models)
    if spec.quant:
        raise ModelNotFoundError(
            f"{listing.repo} has no GGUF files, so :{spec.quant} cannot pick one. Drop the tag to pull its "
            f"safetensors model (and `--quantize q4_k` packs it at load), or look for a -GGUF repo of it."
        )
    return _select_folder(listing)


def _select_file(listing: RepoListing, spec: HubSpec, models: list[GGUFModel]) -> Selection:
    wanted = spec.filename.lower()
    for model in models:
        if any(p.path.lower() == wanted for p in model.parts):
            return Selection("gguf", model.parts, model.path, model.tag or None)
    raise ModelNotFoundError(
        f"{listing.repo} has no GGUF model file {spec.filename}." + _gguf_choices(listing.repo, models, spec)
    )


def _select_quant(listing: RepoListing, spec: HubSpec, models: list[GGUFModel]) -> Selection:
    if spec.quant:
        matches = [m for m in models if m.tag == spec.quant]
        if not matches:  # llama.cpp's looser rule: the tag followed by . or - anywhere in the path
            loose = re.compile(re.escape(spec.quant) + r"[.-]", re.IGNORECASE)
            matches = [m for m in models if loose.search(m.path)]
        if not matches:
            raise ModelNotFoundError(
                f"{listing.repo} has no GGUF file with the quant tag {spec.quant}."
                + _gguf_choices(listing.repo, models, spec)
            )
        if len(matches) > 1:
            raise ModelNotFoundError(_ambiguous(listing.repo, spec.quant, matches, spec))
        return Selection("gguf", matches[0].parts, matches[0].path, matches[0].tag or spec.quant)
    for default in DEFAULT_QUANTS:
        matches = [m for m in models if m.tag == default]
        if len(matches) > 1:
            raise ModelNotFoundError(_ambiguous(listing.repo, default, matches, spec))
        if matches:
            chosen, why = matches[0], "the default"
            break
    else:
        chosen, why = models[0], f"the first; no {' or '.join(DEFAULT_QUANTS)} there"
    rest = [m for m in models if m is not chosen]
    others = sorted({m.tag or m.path for m in rest})
    note = None
    if rest:
        example = HubSpec(spec.repo, spec.revision, rest[0].tag or None, None if rest[0].tag else rest[0].path)
        note = (
            f"{spec.repo} has {len(models)} GGUF models; using {chosen.tag or chosen.path} ({why}). "
            f"Others: {', '.join(others)} (e.g. {example})"
        )
    return Selection("gguf", chosen.parts, chosen.path, chosen.tag or None, note)


def _ambiguous(repo: str, quant: str, matches: list[GGUFModel], spec: HubSpec) -> str:
    names = "\n".join(f"  {m.path}" + (f" (+{len(m.parts) - 1} parts)" if len(m.parts) > 1 else "") for m in matches)
    first = HubSpec(spec.repo, spec.revision, filename=matches[0].path)
    return f"{quant} names {len(matches)} GGUF files in {repo}; pick one by its file name, e.g. {first}:\n{names}"


def _gguf_choices(repo: str, models: list[GGUFModel], spec: HubSpec) -> str:
    if not models:
        return " It has no GGUF model files at all."
    tags = sorted({m.tag for m in models if m.tag})
    lines = [
        f"\nAvailable quant tags: {', '.join(tags)} (e.g. {HubSpec(spec.repo, spec.revision, tags[0])})" if tags else ""
    ]
    lines += ["GGUF files:"] + [f"  {m.path}  ({_size(m.size)})" for m in models]
    return "\n".join(line for line in lines if line)


def _select_folder(listing: RepoListing) -> Selection:
    by_path = {f.path: f for f in listing.files}
    weights = [f for f in listing.files if "/" not in f.path and f.path.endswith(".safetensors")]
    if "config.json" not in by_path or not weights:
        pickles = [f.path for f in listing.files if f.path.endswith(_PICKLES)]
        if pickles:
            raise ModelFileError(
                f"{listing.repo} has only PyTorch pickle weights ({pickles[0]}), which pellucid refuses to load: "
                f"unpickling runs whatever code the file holds. Look for a safetensors or GGUF upload of this "
                f"model ({endpoint()}/models?search={listing.repo.split('/')[1]})."
            )
        shown = ", ".join(sorted(by_path)[:12]) or "nothing"
        raise ModelFileError(
            f"{listing.repo} holds neither GGUF files nor a config.json with *.safetensors weights, so pellucid "
            f"cannot run it (it has: {shown})."
        )
    safe = [f for f in listing.files if ".." not in f.path.split("/") and not f.path.startswith("/")]
    wanted = [
        f
        for f in safe
        if f.path in HF_FOLDER_FILES
        or f in weights
        or ("/" not in f.path and f.path.endswith(".safetensors.index.json"))
        or (f.path.startswith("additional_chat_templates/") and f.path.endswith(".jinja"))
        or _ST_STAGE.match(f.path)
    ]
    return Selection("hf", wanted, "")


# -- fetching and checking ------------------------------------------------------------------------------


def download(listing: RepoListing, files: list[RepoFile], *, quiet: bool = False) -> dict[str, tuple[Path, str]]:
    """Fetch `files` into the Hugging Face cache and check each against the Hub's hash.

    Returns {repo path: (the file in the cache's snapshot folder, its sha256)}. Files the cache already
    holds are not downloaded again, but are checked all the same."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = cache_dir()
    cached = {
        f.path: try_to_load_from_cache(listing.repo, f.path, cache_dir=cache, revision=listing.commit) for f in files
    }
    missing = [f for f in files if not isinstance(cached[f.path], str)]  # str: the cached file's path
    _check_space(listing.repo, missing, cache)
    bar = _progress_class(quiet)
    found = {}
    for f in files:
        with hub_errors(listing.repo, listing.commit, f.path):
            if f.sha256 and not listing.from_cache and not isinstance(cached[f.path], str):
                local = fetch_resumable(listing, f, bar)  # a large (LFS) file: resumable across pulls
            else:
                local = hf_hub_download(
                    listing.repo,
                    f.path,
                    revision=listing.commit,
                    cache_dir=cache,
                    endpoint=endpoint(),
                    local_files_only=listing.from_cache,
                    tqdm_class=bar,
                )
        found[f.path] = (Path(local), verify(listing, f, Path(local), quiet))
    if not listing.from_cache:
        _remember_ref(listing)
    return found


# Connection drops one pull survives by resuming where the file stopped (each attempt asks for the rest).
RESUME_ATTEMPTS = 5
PARTIAL_SUFFIX = ".pellucid-partial"


def fetch_resumable(listing: RepoListing, f: RepoFile, bar) -> Path:
    """Download an LFS file into the Hugging Face cache so that an interrupted pull resumes where it stopped.

    huggingface_hub 2.x writes each download to a temporary file unique to the process and deletes it when the
    process fails, so a pull killed at 90% started over. Here the bytes go to blobs/<sha256>.pellucid-partial,
    which the next attempt (or the next pull, after Ctrl-C or a crash) continues with an HTTP Range request;
    complete, it becomes blobs/<sha256> and snapshots/<commit>/<path> links to it: the cache's own layout, so
    the client, transformers and llama.cpp find the file as if the client had fetched it. Nothing incomplete
    ever has the final name. `verify` checks the sha256 afterwards."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    repo_dir = repo_cache(listing.repo)
    blob = repo_dir / "blobs" / f.sha256
    link = repo_dir / "snapshots" / listing.commit / f.path
    if not blob.exists():
        blob.parent.mkdir(parents=True, exist_ok=True)
        partial = blob.with_name(blob.name + PARTIAL_SUFFIX)
        url = hf_hub_url(listing.repo, f.path, revision=listing.commit, endpoint=endpoint())
        for attempt in range(RESUME_ATTEMPTS):
            have = partial.stat().st_size if partial.exists() else 0
            if f.size is not None and have >= f.size:
                break
            headers = build_hf_headers(token=_token())
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                with get_session().stream("GET", url, headers=headers, follow_redirects=True) as response:
                    if response.status_code >= 400:
                        response.read()
                        hf_raise_for_status(response)
                    resumed = have and response.status_code == 206
                    with (
                        open(partial, "ab" if resumed else "wb") as out,
                        bar(total=f.size, initial=have if resumed else 0, unit="B", unit_scale=True,
                            unit_divisor=1024, desc=Path(f.path).name) as progress,
                    ):  # fmt: skip
                        for chunk in response.iter_bytes(1 << 20):
                            _write_chunk(out, chunk)
                            progress.update(len(chunk))
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    partial.unlink(missing_ok=True)  # a full disk: free what we took, the message says so
                raise
            except Exception as e:  # a dropped connection: ask for the rest, a few times
                if type(e).__name__ not in ("RemoteProtocolError", "ReadError", "ReadTimeout", "ConnectError"):
                    raise
                if attempt == RESUME_ATTEMPTS - 1:
                    raise PellucidError(
                        f"the download of {listing.repo}/{f.path} kept being cut ({_first_line(e)}); "
                        f"{_size(partial.stat().st_size if partial.exists() else 0)} of it is kept: run the same "
                        f"command again to resume."
                    ) from None
        got = partial.stat().st_size
        if f.size is not None and got != f.size:
            raise PellucidError(
                f"the download of {listing.repo}/{f.path} stopped at {_size(got)} of {_size(f.size)}; what arrived "
                f"is kept: run the same command again to resume."
            )
        os.replace(partial, blob)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.unlink(missing_ok=True)  # a dangling link from an earlier, deleted blob
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:  # no symlinks here (some Windows setups): the cache's own fallback is a copy
            shutil.copyfile(blob, link)
    return link


def _write_chunk(out, chunk: bytes) -> None:
    out.write(chunk)  # a function of its own so a test can fill the disk here


def _remember_ref(listing: RepoListing) -> None:
    """Write refs/<branch or tag> -> commit in the cache, as the client does when asked for a branch: the files
    were fetched by commit (so that all come from the same one), which the client does not record."""
    revision = listing.requested_revision or "main"
    if revision != listing.commit and ".." not in revision.split("/"):
        ref = repo_cache(listing.repo) / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(listing.commit)


def _check_space(repo: str, missing: list[RepoFile], cache: Path) -> None:
    needed = sum(f.size or 0 for f in missing)
    free = free_bytes(cache)
    if needed > free:
        raise PellucidError(
            f"not enough disk space for {repo}: the download needs {_size(needed)} and the disk holding the "
            f"Hugging Face cache ({cache}) has {_size(free)} free. Free some space, or set HF_HUB_CACHE (or HF_HOME) "
            f"to a folder on a disk with room. Nothing was downloaded."
        )


def verify(listing: RepoListing, f: RepoFile, local: Path, quiet: bool = False) -> str:
    """The file's sha256, after checking it (or its git blob id) against the Hub; a file that does not
    match is deleted from the cache (its blob and its snapshot link) and is an error."""
    from pellucid.progress import ProgressBar

    size = local.stat().st_size
    git = hashlib.sha1(f"blob {size}\0".encode())  # git's blob id: sha1 of a header and the content
    sha = hashlib.sha256()
    with open(local, "rb") as fh, ProgressBar(size, f"Verifying {Path(f.path).name} (sha256)", disable=quiet) as bar:
        while chunk := fh.read(1 << 22):
            sha.update(chunk)
            if f.sha256 is None:
                git.update(chunk)
            bar.update(len(chunk))
    expected, got = (f.sha256, sha.hexdigest()) if f.sha256 else (f.git_sha1, git.hexdigest())
    if expected is not None and got != expected:
        _delete_cached(local)
        where = "its name in the cache says" if listing.from_cache else "the Hub lists"
        raise ModelFileError(
            f"{listing.repo}/{f.path}: the downloaded file does not match the Hub's hash ({'sha256' if f.sha256 else 'git blob id'} "
            f"{got}, {where} {expected}), so it was deleted from the Hugging Face cache. Pull again; if it "
            f"happens again, the server you download from (HF_ENDPOINT, a proxy) sends a different file."
        )
    return sha.hexdigest()


def _delete_cached(local: Path) -> None:
    blob = Path(os.path.realpath(local))
    for path in (local, blob):
        path.unlink(missing_ok=True)


def _progress_class(quiet: bool):
    """A tqdm class for the client's per-file bars (size, speed, time left), drawn only on a terminal."""
    from tqdm.auto import tqdm

    hidden = quiet or not sys.stderr.isatty()

    class Bar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = hidden
            super().__init__(*args, **kwargs)

    return Bar


def _size(n: int) -> str:
    from pellucid.memory import format_bytes

    return format_bytes(n)


# -- the client's errors, said so a user can act on them ------------------------------------------------


class _Unreachable(PellucidError):
    """The Hub did not answer (no network, DNS, a proxy): the cache may still have the repo."""


@contextmanager
def hub_errors(repo: str, revision: str | None, path: str | None = None) -> Iterator[None]:
    import httpx2
    from huggingface_hub import constants, errors

    # The client reads HF_HUB_OFFLINE once, when it is first imported; pellucid reads it at each call (a
    # library user, or a test, may set it after something imported the client), so the client follows.
    constants.HF_HUB_OFFLINE = offline()
    page = f"{endpoint()}/{repo}"
    try:
        yield
    except errors.GatedRepoError:
        token = (
            " HF_TOKEN is set, but the Hub refused it: is it a token of the account that accepted?" if _token() else ""
        )
        raise PellucidError(
            f"{repo} is gated: accept its license on {page} (logged in), then set HF_TOKEN to an access token "
            f"of that account ({endpoint()}/settings/tokens) and pull again.{token}"
        ) from None
    except errors.RepositoryNotFoundError:
        private = " It may be private: set HF_TOKEN to a token that can read it." if not _token() else ""
        raise ModelNotFoundError(
            f"no model repository {repo} on {endpoint()}: check the name (ORG/REPO, as in {page}).{private}"
        ) from None
    except errors.RevisionNotFoundError:
        raise ModelNotFoundError(
            f"{repo} has no revision {revision!r} (a branch, tag or commit); see {page}/commits/main"
        ) from None
    except errors.RemoteEntryNotFoundError:
        raise ModelNotFoundError(f"{repo} has no file {path} at revision {revision}") from None
    except errors.LocalEntryNotFoundError:
        raise PellucidError(
            f"{repo}/{path} is not in the Hugging Face cache ({cache_dir()}) and the Hub cannot be asked "
            f"(HF_HUB_OFFLINE, or no connection). Unset HF_HUB_OFFLINE or reconnect, then pull again."
        ) from None
    except errors.OfflineModeIsEnabled:
        raise PellucidError(
            f"HF_HUB_OFFLINE was set when pellucid started, so the Hub cannot be asked for {repo}; unset it"
        ) from None
    except errors.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise PellucidError(
            f"the Hub answered HTTP {status} for {repo}{'/' + path if path else ''}: {_first_line(e)}. "
            f"Try again later; a download resumes where it stopped (nothing incomplete is ever used)."
        ) from None
    except (httpx2.ConnectError, httpx2.TimeoutException, httpx2.RemoteProtocolError) as e:
        if path is None:
            raise _Unreachable(f"cannot reach {endpoint()} ({_first_line(e)})") from None
        raise PellucidError(
            f"the download of {repo}/{path} failed ({_first_line(e)}). Run the same command again."
        ) from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise PellucidError(
                f"the disk filled up while downloading {repo}/{path} into {cache_dir()}: nothing half-written "
                f"was kept. Free some space, or set HF_HUB_CACHE (or HF_HOME) to a disk with room."
            ) from None
        if "Consistency check failed" in str(e):
            raise PellucidError(
                f"the download of {repo}/{path} was cut short (the connection dropped and did not come back). "
                f"Run the same command again."
            ) from None
        raise


def _token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [line for line in text.splitlines() if line.strip() and "Client Error" not in line]
    return (lines[0] if lines else text).strip()
