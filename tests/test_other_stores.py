"""Models other tools keep on disk: an Ollama store laid out as Ollama writes it, LM Studio's models folder,
llama.cpp's cache and the Hugging Face cache, built in a temporary HOME. `pellucid list` shows them, and
`pellucid run ollama:NAME` answers from Ollama's blob in place, with Ollama's params and system prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from pellucid import other_stores, store
from test_cli import assert_user_error, run

# What `ollama pull smollm2:135m` leaves beside the GGUF (its template, params and system layers).
CHATML_GO_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2, "num_ctx": 2048, "mirostat": 0}
SYSTEM = "You are a helpful assistant named Olla."


def _link(src: Path, dst: Path) -> None:
    """A hard link where the filesystem allows it (no 100 MB copy), else a copy: Ollama's blobs are real files."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _blob(blobs: Path, data: bytes, media_type: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / f"sha256-{digest}").write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def make_ollama_store(root: Path, gguf: Path, name: str = "smollm2", tag: str = "135m") -> Path:
    """An Ollama models folder as Ollama writes it: blobs/sha256-HEX and a manifest per NAME:TAG."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    _link(gguf, blobs / f"sha256-{sha}")
    layers = [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{sha}", "size": gguf.stat().st_size},
        _blob(blobs, CHATML_GO_TEMPLATE.encode(), "application/vnd.ollama.image.template"),
        _blob(blobs, SYSTEM.encode(), "application/vnd.ollama.image.system"),
        _blob(blobs, b"Apache License 2.0", "application/vnd.ollama.image.license"),
        _blob(blobs, json.dumps(PARAMS).encode(), "application/vnd.ollama.image.params"),
    ]
    config = {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "134.52M",
        "file_type": "Q4_1",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": _blob(
            blobs, json.dumps(config, separators=(",", ":")).encode(), "application/vnd.docker.container.image.v1+json"
        ),
        "layers": layers,
    }
    path = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, separators=(",", ":")))  # Go's json.Marshal: no spaces
    return path


@pytest.fixture
def machine(tmp_path, monkeypatch, smollm2_path, gemma3_path):
    """A HOME where Ollama, LM Studio, llama.cpp and the Hugging Face cache each hold a model."""
    home = tmp_path / "user"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PELLUCID_HOME", str(tmp_path / "pellucid"))
    monkeypatch.setenv("OLLAMA_MODELS", str(home / ".ollama" / "models"))
    for var in ("LLAMA_CACHE", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    make_ollama_store(home / ".ollama" / "models", smollm2_path)
    lmstudio = home / ".lmstudio" / "models" / "lmstudio-community" / "gemma-3-270m-GGUF"
    lmstudio.mkdir(parents=True)
    _link(gemma3_path, lmstudio / "gemma-3-270m-Q4_K_M.gguf")
    llamacpp = home / ".cache" / "llama.cpp"
    llamacpp.mkdir(parents=True)
    _link(smollm2_path, llamacpp / "someone_SmolLM2-GGUF_SmolLM2-135M-Instruct-Q4_1.gguf")
    repo = home / ".cache" / "huggingface" / "hub" / "models--unsloth--gemma-3-270m-GGUF"
    commit = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    sha = store.CATALOG["gemma3-270m"].sha256
    (repo / "blobs").mkdir()
    _link(gemma3_path, repo / "blobs" / sha)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "gemma-3-270m-Q4_K_M.gguf").symlink_to(f"../../blobs/{sha}")
    return home


def test_list_shows_every_store_with_source_size_and_quant(machine, smollm2_path, gemma3_path):
    found = {f.source: f for f in other_stores.find_models()}
    assert set(found) == {"ollama", "lm studio", "llama.cpp", "hf cache"}
    assert found["ollama"].model == "ollama:smollm2:135m" and found["ollama"].quantization == "Q4_1"
    assert found["ollama"].size_bytes == smollm2_path.stat().st_size
    assert found["lm studio"].quantization == "Q4_K_M" and found["lm studio"].size_bytes == gemma3_path.stat().st_size
    assert found["llama.cpp"].quantization == "Q4_1"
    assert found["hf cache"].model == "hf:unsloth/gemma-3-270m-GGUF:Q4_K_M"

    text = run("list").stdout
    assert "In other tools' stores" in text
    for line in (
        "ollama     ollama:smollm2:135m",
        "lm studio  ",
        "llama.cpp  ",
        "hf cache   hf:unsloth/gemma-3-270m-GGUF:Q4_K_M",
    ):
        assert line in text, text
    assert "93.8 MiB" in text and "241 MiB" in text
    listed = json.loads(run("list", "--json").stdout)["elsewhere"]
    assert {e["source"] for e in listed} == set(found)


def test_run_an_ollama_model_in_place(machine, smollm2_path):
    resolved = store.resolve("ollama:SmolLM2:135m", quiet=True)  # names match in any case, as in Ollama
    assert resolved.path.samefile(smollm2_path) and resolved.kind == "gguf"
    assert resolved.defaults == {"stop": PARAMS["stop"], "temperature": 0.2, "ctx": 2048, "system": SYSTEM}

    prompt = ["What is your name?", "-n", "4", "--temperature", "0", "--local"]
    ollama = run("run", "ollama:smollm2:135m", *prompt)
    assert ollama.returncode == 0, ollama.stderr
    # Ollama's Go template is not run (said once), its unknown option named; its system prompt is used:
    assert ollama.stderr.count("is a Go template, which pellucid does not run") == 1
    assert "no pellucid equivalent are ignored: mirostat" in ollama.stderr
    assert "Olla" in ollama.stdout  # the name it was given in Ollama's system layer ("Olla. I" at -n 4)
    assert store.list_models() == []  # nothing was copied


def test_pull_ollama_copies_into_the_store(machine, smollm2_path):
    stored = store.pull("ollama:smollm2:135m", quiet=True)
    assert stored.name == "ollama-smollm2-135m"  # not the catalog's smollm2-135m
    assert stored.path.read_bytes() == smollm2_path.read_bytes() and not stored.path.is_symlink()
    assert stored.origin["type"] == "ollama" and stored.origin["name"] == "smollm2:135m"
    assert stored.defaults["system"] == SYSTEM and stored.summary["quantization"] == "Q4_1"
    assert store.resolve("ollama-smollm2-135m").defaults["temperature"] == 0.2  # the params travel along
    assert "ollama:smollm2:135m" in run("list").stdout.split("In other tools")[0]  # its SOURCE in the store


def test_unknown_ollama_model(machine):
    proc = run("run", "ollama:llama9", "hi")
    assert_user_error(proc, "no Ollama model 'llama9'", "smollm2:135m", "ollama pull llama9")


def test_ollama_names():
    q = other_stores._qualified
    assert q("smollm2") == ("registry.ollama.ai", "library", "smollm2", "latest")
    assert q("SmolLM2:135M") == ("registry.ollama.ai", "library", "smollm2", "135m")
    assert q("me/model:v1") == ("registry.ollama.ai", "me", "model", "v1")
    assert q("hf.co/org/Repo-GGUF:Q4_K_M") == ("hf.co", "org", "repo-gguf", "q4_k_m")
