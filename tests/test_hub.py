"""Models from the Hugging Face Hub (`hf:ORG/REPO[:QUANT]`), through the real huggingface_hub client talking to
a local stand-in for the Hub (tests/fake_hub.py): quant tags, split GGUFs, safetensors repos, resume, hashes,
gated and missing repos, offline mode. No test reaches the internet.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fake_hub import VALID_TOKEN, FakeHub, start
from pellucid import hub, store
from pellucid.errors import ModelFileError, ModelNotFoundError, PellucidError
from test_cli import assert_user_error, run

gguf = pytest.importorskip("gguf")


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A running fake Hub, the client pointed at it, and an empty store and Hugging Face cache."""
    hub_state = FakeHub()
    server = start(hub_state)
    monkeypatch.setenv("HF_ENDPOINT", hub_state.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("PELLUCID_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    yield hub_state
    server.shutdown()
    server.server_close()


def tiny_gguf(path: Path, file_type: int = 7, n_tensors: int = 1, split: bool = False, rows: int = 4) -> Path:
    """A small valid GGUF (llama architecture); split=True writes one part per tensor, as gguf-split does."""
    writer = gguf.GGUFWriter(str(path), "llama", split_max_tensors=1 if split else 0)
    writer.add_name("tiny")
    writer.add_block_count(1)
    writer.add_file_type(file_type)
    for i in range(n_tensors):
        writer.add_tensor(f"blk.0.t{i}.weight", np.arange(rows * 16, dtype=np.float32).reshape(rows, 16) + i)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def cache_blobs(tmp_path: Path, repo: str) -> list[str]:
    blobs = tmp_path / "hf" / "hub" / ("models--" + repo.replace("/", "--")) / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.is_dir() else []


# -- GGUF repos: picking the file -----------------------------------------------------------------------


def test_pick_by_quant_tag_and_use_without_network(fake_hub, tmp_path, smollm2_path):
    q8 = tiny_gguf(tmp_path / "q8.gguf")
    fake_hub.add_repo(
        "someone/SmolLM2-135M-Instruct-GGUF",
        {
            "SmolLM2-135M-Instruct-Q4_1.gguf": smollm2_path,
            "SmolLM2-135M-Instruct-Q8_0.gguf": q8,
            "SmolLM2-135M-Instruct-mmproj-f16.gguf": q8,  # a vision projector: never a model
            "README.md": b"---\nlicense: apache-2.0\n---\n",
        },
    )
    stored = store.pull("hf:someone/SmolLM2-135M-Instruct-GGUF:q4_1", quiet=True)  # tags match in any case
    assert stored.name == "smollm2-135m-instruct-q4_1"
    assert hashlib.sha256(stored.path.read_bytes()).hexdigest() == store.CATALOG["smollm2-135m"].sha256
    assert fake_hub.downloads() == [f"/cdn/{store.CATALOG['smollm2-135m'].sha256}"]  # only the asked file
    assert stored.path.is_symlink() and "models--someone--SmolLM2-135M-Instruct-GGUF" in os.readlink(stored.path)
    assert stored.source == "hf:someone/SmolLM2-135M-Instruct-GGUF:Q4_1"
    assert stored.summary["quantization"] == "Q4_1" and stored.summary["architecture"] == "llama"
    manifest = json.loads((stored.dir / "manifest.json").read_text())
    assert manifest["origin"]["repo"] == "someone/SmolLM2-135M-Instruct-GGUF"
    assert manifest["origin"]["revision"] == fake_hub.repos["someone/smollm2-135m-instruct-gguf"].commit
    assert manifest["files"]["SmolLM2-135M-Instruct-Q4_1.gguf"]["sha256"] == store.CATALOG["smollm2-135m"].sha256

    seen = len(fake_hub.requests)
    resolved = store.resolve("hf:someone/smollm2-135m-instruct-gguf:Q4_1")  # the store's copy, no network
    assert resolved.path == stored.path and len(fake_hub.requests) == seen
    assert resolved.origin["source"] == stored.source and resolved.origin["revision"] == manifest["origin"]["revision"]


def test_default_quant_is_q4_k_m_and_a_repeat_pull_is_up_to_date(fake_hub, tmp_path, capsys):
    fake_hub.add_repo(
        "org/Tiny-GGUF",
        {
            "Tiny-Q8_0.gguf": tiny_gguf(tmp_path / "a.gguf", file_type=7),
            "Tiny-Q4_K_M.gguf": tiny_gguf(tmp_path / "b.gguf", file_type=15),
            "Tiny-F16.gguf": tiny_gguf(tmp_path / "c.gguf", file_type=1),
        },
    )
    stored = store.pull("hf:org/Tiny-GGUF")
    assert stored.path.name == "Tiny-Q4_K_M.gguf" and stored.summary["quantization"] == "Q4_K_M"
    err = capsys.readouterr().err
    assert "using Q4_K_M (the default)" in err and "Others: F16, Q8_0" in err
    again = store.pull("hf:org/Tiny-GGUF:Q4_K_M")  # the same file under its tag: no second copy
    assert again.name == stored.name and "already in the store" in capsys.readouterr().err
    assert len(store.list_models()) == 1 and len(fake_hub.downloads()) == 1
    assert store.resolve("hf:org/Tiny-GGUF:q4_k_m").path == stored.path  # both names now resolve offline
    with pytest.raises(PellucidError, match="a model named tiny-q4_k_m is already in the store"):
        store.pull("hf:org/Tiny-GGUF:Q8_0", name=stored.name, quiet=True)  # another file, under a taken name


def test_ambiguous_and_missing_tags_list_the_choices(fake_hub, tmp_path):
    tiny = tiny_gguf(tmp_path / "t.gguf")
    fake_hub.add_repo("org/Many-GGUF", {"Many-Q4_K_M.gguf": tiny, "Many-UD-Q4_K_M.gguf": tiny, "Many-Q8_0.gguf": tiny})
    with pytest.raises(ModelNotFoundError) as ambiguous:
        store.pull("hf:org/Many-GGUF:Q4_K_M", quiet=True)
    message = str(ambiguous.value)
    assert "Q4_K_M names 2 GGUF files in org/Many-GGUF" in message
    assert "Many-Q4_K_M.gguf" in message and "Many-UD-Q4_K_M.gguf" in message
    assert "hf:org/Many-GGUF/Many-Q4_K_M.gguf" in message  # how to name one
    with pytest.raises(ModelNotFoundError) as missing:
        store.pull("hf:org/Many-GGUF:Q5_K_M", quiet=True)
    assert "no GGUF file with the quant tag Q5_K_M" in str(missing.value)
    assert "Available quant tags: Q4_K_M, Q8_0" in str(missing.value)
    assert fake_hub.downloads() == [] and store.list_models() == []
    by_file = store.pull("hf:org/Many-GGUF/Many-UD-Q4_K_M.gguf", quiet=True)
    assert by_file.path.name == "Many-UD-Q4_K_M.gguf"


def test_split_gguf_brings_all_its_parts(fake_hub, tmp_path):
    tiny_gguf(tmp_path / "Tiny-Q8_0.gguf", n_tensors=3, split=True)
    parts = sorted(tmp_path.glob("Tiny-Q8_0-*-of-00003.gguf"))
    assert len(parts) == 3
    files = {f"Q8_0/{p.name}": p for p in parts}
    files["Tiny-Q4_0.gguf"] = tiny_gguf(tmp_path / "q4.gguf", file_type=2)
    fake_hub.add_repo("org/Split-GGUF", files)
    stored = store.pull("hf:org/Split-GGUF:Q8_0", quiet=True)
    assert stored.path.name == "Tiny-Q8_0-00001-of-00003.gguf"  # the model is named by its first part
    assert sorted(stored.files) == [p.name for p in parts]  # every part, side by side in one folder
    for p in parts:
        assert (stored.dir / p.name).read_bytes() == p.read_bytes()
    assert stored.summary["parameters"] == 3 * 64  # counted over all three parts
    assert stored.summary["size_bytes"] == sum(p.stat().st_size for p in parts)
    assert store.resolve("hf:org/Split-GGUF:Q8_0").path == stored.path
    from pellucid.formats.gguf import GGUFFile

    with GGUFFile(stored.path) as g:  # the links in the store keep the parts' names: they open as one model
        assert len(g.parts) == 3 and len(g.tensors) == 3


@pytest.mark.slow
def test_a_split_model_pulled_from_the_hub_runs(fake_hub, smollm2_path, tmp_path):
    import pellucid
    from model_helpers import write_split

    parts = write_split(smollm2_path, tmp_path / "SmolLM2-135M-Instruct-Q4_1", 2)
    fake_hub.add_repo("org/SmolLM2-GGUF", {p.name: p for p in parts})
    split = pellucid.load("hf:org/SmolLM2-GGUF:Q4_1", ctx=64)
    whole = pellucid.load(str(smollm2_path), ctx=64)
    ask = {"max_tokens": 6, "temperature": 0}
    assert (
        split.generate("The capital of France is", **ask).result().text
        == whole.generate("The capital of France is", **ask).result().text
    )


# -- safetensors repos ----------------------------------------------------------------------------------


def test_safetensors_repo_pulls_only_what_pellucid_reads(fake_hub, minilm_path):
    files = {p.relative_to(minilm_path).as_posix(): p for p in minilm_path.rglob("*") if p.is_file()}
    junk = {
        "pytorch_model.bin": b"\x80\x04 pickle",
        "optimizer.pt": b"\x80\x04 pickle",
        "onnx/model.onnx": b"onnx",
        "openvino/openvino_model.xml": b"<xml/>",
        "tf_model.h5": b"h5",
        "onnx/model.safetensors": b"not at the top level",
    }
    fake_hub.add_repo("sentence-transformers/all-MiniLM-L6-v2", {**files, **junk})
    stored = store.pull("hf:sentence-transformers/all-MiniLM-L6-v2", quiet=True)
    assert stored.kind == "hf" and stored.path.name == "all-MiniLM-L6-v2"
    pulled = {rel.split("/", 1)[1] for rel in stored.files}
    assert pulled == set(files) - {".gitattributes", "data_config.json"}
    assert not pulled & set(junk)
    assert (stored.path / "1_Pooling" / "config.json").is_file()  # the sentence-transformers stage

    from pellucid.engine.embed import load_embedder

    via_hub = load_embedder(store.resolve("hf:sentence-transformers/all-MiniLM-L6-v2")).embed(["a cat"])
    direct = load_embedder(store.resolve_path(minilm_path)).embed(["a cat"])
    assert via_hub.tolist() == direct.tolist()  # the same files, so bit-identical vectors


def test_a_pickle_only_repo_is_refused(fake_hub):
    fake_hub.add_repo("org/old", {"config.json": b"{}", "pytorch_model.bin": b"\x80\x04 pickle"})
    with pytest.raises(ModelFileError, match="only PyTorch pickle weights"):
        store.pull("hf:org/old", quiet=True)
    assert fake_hub.downloads() == []


# -- transfers: resume, hashes, disk space --------------------------------------------------------------


def test_a_cut_transfer_resumes_and_a_failed_pull_resumes_in_the_next(fake_hub, tmp_path):
    # 24 MiB: the client hands data to the file in 10 MiB chunks, so a resume starts after the last whole one
    big = tiny_gguf(tmp_path / "big.gguf", rows=393216)
    repo = fake_hub.add_repo("org/Big-GGUF", {"Big-Q8_0.gguf": big})
    sha = repo.files["Big-Q8_0.gguf"].sha256
    fake_hub.cut[sha] = "once"  # the first GET sends half the file, then drops the connection
    stored = store.pull("hf:org/Big-GGUF", quiet=True)
    assert stored.path.read_bytes() == big.read_bytes()
    first, second = [r for m, p, r in fake_hub.requests if p == f"/cdn/{sha}"]
    assert first == "" and 0 < int(second.removeprefix("bytes=").rstrip("-")) <= big.stat().st_size // 2  # resumed

    store.remove(stored.name)
    shutil.rmtree(tmp_path / "hf")
    fake_hub.cut[sha] = "then fail"  # half a file, then the server fails: this pull cannot finish
    with pytest.raises(PellucidError, match="HTTP 500"):
        store.pull("hf:org/Big-GGUF", quiet=True)
    # nothing under the final name: only what arrived, kept aside for the next pull
    assert cache_blobs(tmp_path, "org/Big-GGUF") == [sha + ".pellucid-partial"]
    assert store.list_models() == []
    fake_hub.cut.pop(sha)
    fake_hub.requests.clear()
    assert store.pull("hf:org/Big-GGUF", quiet=True).path.read_bytes() == big.read_bytes()  # the next one resumes
    (ranged,) = [r for m, p, r in fake_hub.requests if p == f"/cdn/{sha}" and m == "GET"]
    assert 0 < int(ranged.removeprefix("bytes=").rstrip("-")) <= big.stat().st_size // 2  # from where it stopped
    assert cache_blobs(tmp_path, "org/Big-GGUF") == [sha]


def test_a_wrong_sha256_deletes_the_file(fake_hub, tmp_path):
    fake_hub.add_repo(
        "org/Liar-GGUF", {"Liar-Q8_0.gguf": tiny_gguf(tmp_path / "x.gguf")}, lie_about=("Liar-Q8_0.gguf",)
    )
    with pytest.raises(ModelFileError) as err:
        store.pull("hf:org/Liar-GGUF", quiet=True)
    assert "does not match the Hub's hash" in str(err.value) and "deleted" in str(err.value)
    assert cache_blobs(tmp_path, "org/Liar-GGUF") == []
    snapshots = tmp_path / "hf" / "hub" / "models--org--Liar-GGUF" / "snapshots"
    assert not any(p.is_file() or p.is_symlink() for p in snapshots.rglob("*"))
    assert store.list_models() == [] and not list((tmp_path / "home").rglob("*.gguf"))


def test_not_enough_disk_space(fake_hub, tmp_path, monkeypatch):
    fake_hub.add_repo("org/Tiny-GGUF", {"Tiny-Q8_0.gguf": tiny_gguf(tmp_path / "x.gguf")})
    monkeypatch.setattr(hub, "free_bytes", lambda path: 100)
    with pytest.raises(PellucidError, match="not enough disk space for org/Tiny-GGUF"):
        store.pull("hf:org/Tiny-GGUF", quiet=True)
    assert fake_hub.downloads() == []


def test_a_disk_that_fills_up_midway(fake_hub, tmp_path, monkeypatch):
    from pellucid import hub

    fake_hub.add_repo("org/Tiny-GGUF", {"Tiny-Q8_0.gguf": tiny_gguf(tmp_path / "x.gguf")})

    def full_disk(out, chunk):
        out.write(chunk[:9])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hub, "_write_chunk", full_disk)
    with pytest.raises(PellucidError, match="the disk filled up while downloading org/Tiny-GGUF/Tiny-Q8_0.gguf"):
        store.pull("hf:org/Tiny-GGUF", quiet=True)
    assert cache_blobs(tmp_path, "org/Tiny-GGUF") == [] and store.list_models() == []


# -- access errors and offline mode ---------------------------------------------------------------------


def test_gated_and_missing_repos_through_the_cli(fake_hub, smollm2_path):
    fake_hub.add_repo("org/Gated-GGUF", {"Gated-Q4_1.gguf": smollm2_path}, gated=True)
    gated = run("pull", "hf:org/Gated-GGUF")
    assert_user_error(gated, "org/Gated-GGUF is gated: accept its license on", "set HF_TOKEN")
    missing = run("pull", "hf:org/no-such-model")
    assert_user_error(missing, "no model repository org/no-such-model on", "set HF_TOKEN")
    allowed = run("pull", "hf:org/Gated-GGUF", env={"HF_TOKEN": VALID_TOKEN})
    assert allowed.returncode == 0, allowed.stderr
    assert "gated-q4_1: llama, 135M parameters, Q4_1" in allowed.stdout

    # list and inspect say where it came from (the manifest's origin), without asking the Hub again
    commit = fake_hub.repos["org/gated-gguf"].commit
    seen = len(fake_hub.requests)
    listing = run("list")
    assert f"hf:org/Gated-GGUF ({commit[:7]})" in listing.stdout, listing.stdout
    report = run("inspect", "hf:org/Gated-GGUF")
    assert f"from hf:org/Gated-GGUF, commit {commit[:12]}, pulled " in report.stdout, report.stderr
    origin = json.loads(run("list", "--json").stdout)["models"][0]["origin"]
    assert origin["repo"] == "org/Gated-GGUF" and origin["revision"] == commit
    assert len(fake_hub.requests) == seen


def test_manifests_without_origin_still_read(fake_hub, tmp_path):
    """A manifest written before origin/defaults existed (as pellucid 0.1 wrote them)."""
    folder = tmp_path / "home" / "models" / "old"
    folder.mkdir(parents=True)
    tiny_gguf(folder / "old.gguf")
    old = {"name": "old", "kind": "gguf", "path": "old.gguf", "source": "url:http://x/old.gguf", "files": {}}
    (folder / "manifest.json").write_text(json.dumps(old))
    [model] = store.list_models()
    assert model.origin == {} and model.defaults == {} and model.source == "url:http://x/old.gguf"
    assert store.resolve("old").origin["source"] == "url:http://x/old.gguf"
    assert "url:http://x/old.gguf" in run("list").stdout


def test_offline_uses_a_warm_cache_and_says_when_it_is_cold(fake_hub, tmp_path, monkeypatch, capsys):
    fake_hub.add_repo("org/Tiny-GGUF", {"Tiny-Q8_0.gguf": tiny_gguf(tmp_path / "x.gguf")})
    first = store.pull("hf:org/Tiny-GGUF", quiet=True)
    data = first.path.read_bytes()
    store.remove(first.name)  # the store forgets it; the Hugging Face cache keeps the file
    seen = len(fake_hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = store.resolve("hf:org/Tiny-GGUF", quiet=True)  # pulled from the cache alone, and checked
    assert again.path.read_bytes() == data and len(fake_hub.requests) == seen
    with pytest.raises(PellucidError, match="HF_HUB_OFFLINE is set and org/Other-GGUF is not in the Hugging Face"):
        store.pull("hf:org/Other-GGUF", quiet=True)

    # No HF_HUB_OFFLINE, but no Hub either (nothing listens on port 9): the cache serves, with a warning
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    store.remove(again.name)
    assert store.pull("hf:org/Tiny-GGUF").path.read_bytes() == data
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    with pytest.raises(PellucidError, match="Check the connection"):
        store.pull("hf:org/Other-GGUF", quiet=True)


def test_a_cache_file_deleted_behind_the_stores_back(fake_hub, tmp_path):
    fake_hub.add_repo("org/Tiny-GGUF", {"Tiny-Q8_0.gguf": tiny_gguf(tmp_path / "x.gguf")})
    stored = store.pull("hf:org/Tiny-GGUF", quiet=True)
    Path(os.path.realpath(stored.path)).unlink()  # as `hf cache rm` would
    with pytest.raises(ModelFileError, match=r"which is gone\)\. Re-pull it: `pellucid pull hf:org/Tiny-GGUF --force`"):
        store.resolve("hf:org/Tiny-GGUF")
    again = store.pull("hf:org/Tiny-GGUF", force=True, quiet=True)
    assert again.name == stored.name and store.resolve("hf:org/Tiny-GGUF").path.read_bytes().startswith(b"GGUF")


def test_spec_parsing():
    assert hub.parse_spec("hf:org/repo") == hub.HubSpec("org/repo")
    assert hub.parse_spec("hf:org/repo:q4_k_m") == hub.HubSpec("org/repo", quant="Q4_K_M")
    assert hub.parse_spec("hf.co/org/repo@v1.0:Q8_0") == hub.HubSpec("org/repo", "v1.0", "Q8_0")
    assert hub.parse_spec("hf:org/repo/sub/x.gguf@main") == hub.HubSpec("org/repo", "main", None, "sub/x.gguf")
    assert str(hub.HubSpec("org/repo", "dev", "Q4_0")) == "hf:org/repo@dev:Q4_0"
    with pytest.raises(PellucidError, match="not a Hugging Face model name"):
        hub.parse_spec("hf:just-a-name")
