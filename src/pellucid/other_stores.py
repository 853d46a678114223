"""Models other tools already keep on disk, used where they lie: nothing is copied unless asked.

`pellucid list` shows them beside the store, each with what to pass as MODEL:

Ollama   $OLLAMA_MODELS, else ~/.ollama/models (and /usr/share/ollama/.ollama/models, the Linux service's):
             manifests/HOST/NAMESPACE/MODEL/TAG   a JSON manifest: a config blob and a list of layers
             blobs/sha256-HEX                     every layer and config, named by the sha256 of its bytes
         Layers by mediaType: application/vnd.ollama.image.model is the GGUF file; .template is the chat
         template (a Go template); .params a JSON object of options (stop, temperature, num_ctx...);
         .system the default system prompt; .license, .projector, .adapter. The config blob
         (application/vnd.docker.container.image.v1+json) says model_family, model_type (the parameter
         count, "135M") and file_type (the quantization, "Q4_K_M"). `ollama:NAME[:TAG]` (TAG defaults to
         latest) is registry.ollama.ai/library/NAME/TAG; `ollama:USER/NAME:TAG` and
         `ollama:hf.co/ORG/REPO:TAG` name the other namespaces and hosts.
         MODEL: ollama:NAME:TAG, run from the blob in place. pellucid cannot run Go templates, so the
         chat template inside the GGUF is used (it says so, once); the params become sampling defaults
         (command-line flags win) and the system layer the default system message.
LM Studio  the folder in ~/.lmstudio-home-pointer, else ~/.lmstudio (older: ~/.cache/lm-studio); models
         under its settings.json "downloadsFolder", else models/PUBLISHER/REPO/*.gguf. MODEL: the path.
llama.cpp  $LLAMA_CACHE, else ~/.cache/llama.cpp: `-hf` wrote ORG_REPO_FILE.gguf files there before it
         moved to the Hugging Face cache (which LLAMA_CACHE still relocates). MODEL: the path.
HF cache   $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub: models--ORG--REPO/snapshots/
         COMMIT/... (hub.py). MODEL: hf:ORG/REPO[:QUANT], which links it into the store without a download.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pellucid import hub
from pellucid.errors import ModelFileError, ModelNotFoundError

OLLAMA_HOST = "registry.ollama.ai"
OLLAMA_NAMESPACE = "library"
OLLAMA_TAG = "latest"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_MANIFEST_LIST = "application/vnd.ollama.manifest.list.v2+json"

# Ollama options that are pellucid sampling settings under the same name (engine/sampling.py).
OLLAMA_SAMPLING = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)


@dataclass
class FoundModel:
    """A model in another tool's store, as `pellucid list` shows it."""

    source: str  # "ollama", "lm studio", "llama.cpp", "hf cache"
    model: str  # what to pass as MODEL
    path: Path  # the GGUF (a split model's first part) or the model folder
    kind: str  # "gguf" or "hf"
    quantization: str
    size_bytes: int


def find_models() -> list[FoundModel]:
    """Every model the other tools' stores hold, in that order."""
    found = [FoundModel("ollama", f"ollama:{m.name}", m.blob, "gguf", m.quantization, m.size) for m in ollama_models()]
    found += [_gguf_found("lm studio", path) for path in _gguf_files(lmstudio_models_dir(), depth=3)]
    llama_cache = llamacpp_cache_dir()
    found += [_gguf_found("llama.cpp", path) for path in _gguf_files(llama_cache, depth=1)]
    if llama_cache != hub.cache_dir():
        found += [_as_path(f, "llama.cpp") for f in hf_cache_models(llama_cache)]  # -hf's new layout
    found += hf_cache_models(hub.cache_dir())
    return found


# -- Ollama ---------------------------------------------------------------------------------------------


@dataclass
class OllamaModel:
    name: str  # the shortest name Ollama shows: smollm2:135m, user/model:tag, hf.co/org/repo:tag
    manifest: Path
    blob: Path  # the GGUF file
    size: int
    quantization: str = "?"
    parameter_size: str = ""
    template: str | None = None  # a Go template: pellucid does not run it
    system: str | None = None
    params: dict = field(default_factory=dict)


def ollama_dirs() -> list[Path]:
    if os.environ.get("OLLAMA_MODELS"):
        return [Path(os.environ["OLLAMA_MODELS"]).expanduser()]
    candidates = [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]
    return [d for d in candidates if d.is_dir()]


def ollama_models() -> list[OllamaModel]:
    models = []
    for root in ollama_dirs():
        manifests = root / "manifests"
        for path in sorted(manifests.rglob("*")) if manifests.is_dir() else []:
            parts = path.relative_to(manifests).parts
            if path.is_file() and len(parts) in (4, 5):  # HOST/NAMESPACE[/KIND]/MODEL/TAG
                model = _read_ollama_manifest(path, root / "blobs", _display_name(parts))
                if model is not None:
                    models.append(model)
    return models


def find_ollama(name: str) -> OllamaModel:
    """The Ollama model NAME[:TAG] (case does not matter, as in Ollama)."""
    wanted = _qualified(name)
    models = ollama_models()
    for model in models:
        if _qualified(model.name) == wanted:
            return model
    known = ", ".join(m.name for m in models) or "none"
    where = ", ".join(str(d) for d in ollama_dirs()) or "~/.ollama/models (absent; set OLLAMA_MODELS?)"
    raise ModelNotFoundError(
        f"no Ollama model {name!r} with a GGUF file in {where}. Ollama's models here: {known}. "
        f"(`ollama pull {name}` fetches it.)"
    )


def _qualified(name: str) -> tuple[str, str, str, str]:
    """Ollama's name rules: [HOST/][NAMESPACE/]MODEL[:TAG], defaults registry.ollama.ai, library, latest."""
    base, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:  # no tag (a colon inside a host:port is not one)
        base, tag = name, ""
    parts = base.split("/")
    host = parts[0] if len(parts) == 3 else OLLAMA_HOST
    namespace = parts[-2] if len(parts) >= 2 else OLLAMA_NAMESPACE
    return host.lower(), namespace.lower(), parts[-1].lower(), (tag or OLLAMA_TAG).lower()


def _display_name(parts: tuple[str, ...]) -> str:
    host, namespace, model, tag = parts[0], parts[1], parts[-2], parts[-1]
    if host.lower() != OLLAMA_HOST:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace.lower() != OLLAMA_NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def _read_ollama_manifest(path: Path, blobs: Path, name: str) -> OllamaModel | None:
    """The model a manifest describes, or None when it has no GGUF layer (Ollama's safetensors/MLX models,
    cloud models) or cannot be read."""
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("mediaType") == MEDIA_MANIFEST_LIST:  # newer Ollama: one child manifest per runner
            manifest = _gguf_child(manifest, blobs) or {}
        layers = {layer["mediaType"].split(";")[0]: layer for layer in manifest.get("layers", [])}
        if MEDIA_MODEL not in layers:
            return None
        model = layers[MEDIA_MODEL]
        blob = _blob(blobs, model["digest"])
        if not blob.is_file():
            return None
        config = _read_blob_json(blobs, manifest.get("config", {}).get("digest"))
        return OllamaModel(
            name=name,
            manifest=path,
            blob=blob,
            size=int(model.get("size") or blob.stat().st_size),
            quantization=str(config.get("file_type") or _tag_of(name) or "?"),
            parameter_size=str(config.get("model_type") or ""),
            template=_read_blob_text(blobs, layers.get(MEDIA_TEMPLATE)),
            system=_read_blob_text(blobs, layers.get(MEDIA_SYSTEM)),
            params=_read_blob_json(blobs, (layers.get(MEDIA_PARAMS) or {}).get("digest")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _gguf_child(manifest_list: dict, blobs: Path) -> dict | None:
    for child in manifest_list.get("manifests", []):
        if child.get("format") not in (None, "", "gguf"):
            continue
        if not child.get("layers") and child.get("digest"):  # a reference: the child manifest is a blob
            child = _read_blob_json(blobs, child["digest"])
        if any(layer.get("mediaType") == MEDIA_MODEL for layer in child.get("layers", [])):
            return child
    return None


def _blob(blobs: Path, digest: str) -> Path:
    if not re.fullmatch(r"sha256[:-][0-9a-fA-F]{64}", digest or ""):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return blobs / digest.replace(":", "-")


def _read_blob_text(blobs: Path, layer: dict | None) -> str | None:
    return _blob(blobs, layer["digest"]).read_text(encoding="utf-8") if layer else None


def _read_blob_json(blobs: Path, digest: str | None) -> dict:
    if not digest:
        return {}
    data = json.loads(_blob(blobs, digest).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def ollama_defaults(model: OllamaModel) -> tuple[dict, list[str]]:
    """pellucid's defaults from an Ollama model's params and system layers (see cli/generate.py, where flags
    win over them), and the options pellucid has no equivalent for."""
    defaults, ignored = {}, []
    for key, value in model.params.items():
        if key in OLLAMA_SAMPLING:
            defaults[key] = value
        elif key == "stop":
            defaults["stop"] = [value] if isinstance(value, str) else list(value)
        elif key == "num_ctx":
            defaults["ctx"] = int(value)
        elif key == "num_predict":
            if int(value) > 0:
                defaults["max_tokens"] = int(value)
        else:
            ignored.append(key)
    if model.system:
        defaults["system"] = model.system
    return defaults, sorted(ignored)


_NOTED: set[str] = set()  # the Ollama models whose template note this process has printed (say it once)


def resolve_ollama(name: str, *, quiet: bool = False):
    """`ollama:NAME[:TAG]`: the GGUF blob in place, with Ollama's params as defaults."""
    from pellucid.store import ResolvedModel

    model = find_ollama(name)
    with open(model.blob, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelFileError(f"ollama:{model.name}: its model layer {model.blob} is not a GGUF file")
    defaults, ignored = ollama_defaults(model)
    if not quiet and model.name not in _NOTED:
        _NOTED.add(model.name)
        for line in _ollama_notes(model, ignored):
            print(f"note: {line}", file=sys.stderr)
    origin = {"source": f"ollama:{model.name}", "manifest": str(model.manifest)}
    return ResolvedModel(model.name, "gguf", model.blob, origin=origin, defaults=defaults)


def _ollama_notes(model: OllamaModel, ignored: list[str]) -> list[str]:
    notes = []
    if model.template:
        notes.append(
            f"Ollama's chat template for {model.name} is a Go template, which pellucid does not run; "
            f"pellucid uses the chat template stored in the GGUF file instead"
        )
    if ignored:
        notes.append(f"Ollama parameters of {model.name} with no pellucid equivalent are ignored: {', '.join(ignored)}")
    return notes


# -- LM Studio, llama.cpp, the Hugging Face cache ------------------------------------------------------


def lmstudio_models_dir() -> Path | None:
    pointer = Path.home() / ".lmstudio-home-pointer"  # LM Studio writes its home folder's path here
    homes = [Path.home() / ".lmstudio", Path.home() / ".cache" / "lm-studio"]
    if pointer.is_file() and pointer.read_text(encoding="utf-8").strip():
        homes.insert(0, Path(pointer.read_text(encoding="utf-8").strip().splitlines()[0]))
    for home in homes:
        if home.is_dir():
            try:
                folder = json.loads((home / "settings.json").read_text()).get("downloadsFolder")
            except (OSError, ValueError, AttributeError):
                folder = None
            return Path(folder).expanduser() if folder else home / "models"
    return None


def llamacpp_cache_dir() -> Path:
    if os.environ.get("LLAMA_CACHE"):
        return Path(os.environ["LLAMA_CACHE"]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "llama.cpp"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "llama.cpp"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "llama.cpp"


def hf_cache_models(cache: Path) -> list[FoundModel]:
    """The models in a Hugging Face cache: each repo's GGUF models and safetensors folder at its main ref."""
    found = []
    for repo_dir in sorted(cache.glob("models--*--*")) if cache.is_dir() else []:
        repo = repo_dir.name[len("models--") :].replace("--", "/", 1)
        listing = hub.cached_listing(repo, None) or _newest_snapshot(repo, repo_dir)
        if listing is None:
            continue
        snapshot = repo_dir / "snapshots" / listing.commit
        models = hub.gguf_models(listing.files)
        for m in models:
            unique = m.tag and sum(other.tag == m.tag for other in models) == 1
            spec = hub.HubSpec(repo, quant=m.tag) if unique else hub.HubSpec(repo, filename=m.path)
            found.append(FoundModel("hf cache", str(spec), snapshot / m.path, "gguf", m.tag or "?", m.size))
        paths = {f.path for f in listing.files}
        if "config.json" in paths and any("/" not in p and p.endswith(".safetensors") for p in paths):
            size = sum(f.size or 0 for f in listing.files)
            found.append(FoundModel("hf cache", f"hf:{repo}", snapshot, "hf", "safetensors", size))
    return found


def _newest_snapshot(repo: str, repo_dir: Path) -> hub.RepoListing | None:
    snapshots = sorted((repo_dir / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
    return hub.cached_listing(repo, snapshots[-1].name) if snapshots else None


def _as_path(found: FoundModel, source: str) -> FoundModel:
    return FoundModel(source, str(found.path), found.path, found.kind, found.quantization, found.size_bytes)


def _gguf_files(root: Path | None, depth: int) -> list[Path]:
    """The GGUF models under root (a split model by its first part), at most `depth` folders down."""
    if root is None or not root.is_dir():
        return []
    files = []
    for level in range(depth):
        for path in sorted(root.glob("/".join(["*"] * level + ["*.gguf"]))):
            name = path.name.lower()
            if path.is_file() and "mmproj" not in name and hub.split_info(path.name)[1] == 1:
                files.append(path)
    return files


def _gguf_found(source: str, path: Path) -> FoundModel:
    prefix, _, count = hub.split_info(path.name)
    parts = (
        [path.with_name(f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)] if count > 1 else [path]
    )
    size = sum(p.stat().st_size for p in parts if p.is_file())
    return FoundModel(source, str(path), path, "gguf", _tag_of(prefix) or "?", size)


def _tag_of(name: str) -> str:
    """The quant tag at the end of a file or Ollama tag name (Llama-3.2-1B-Q4_K_M -> Q4_K_M)."""
    m = re.search(r"(?:^|[-._:])((?:I?Q\d[A-Z0-9_]*)|F16|BF16|F32)$", name, re.IGNORECASE)
    return m[1].upper() if m else ""
