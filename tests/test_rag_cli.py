"""`pellucid embed` and `pellucid rag index|search|ask` as a user runs them (in-process, real models)."""

from __future__ import annotations

import json

import pytest
import torch

from pellucid import cli

NOTES = {
    "cats.md": "# Cats\n\n## Sleep\n\nCats sleep between 12 and 16 hours a day.\n\n## Food\n\nCats eat fish.",
    "coffee/espresso.txt": "An espresso is brewed at 9 bar of pressure for about 25 seconds.",
    "water.html": "<title>Water</title><h1>Water</h1><p>Water boils at 100 degrees Celsius at sea level.</p>",
}


def main(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def notes_db(tmp_path_factory, minilm_path):
    root = tmp_path_factory.mktemp("notes")
    for rel, text in NOTES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    db = root.parent / f"{root.name}.db"
    args = ["rag", "index", str(root), "--db", str(db), "--embed-model", str(minilm_path), "--tag", "owner=me"]
    assert cli.main(args) == 0
    return root, str(db)


def test_embed_prints_vectors(capsys, minilm_path):
    from pellucid.engine.embed import load_embedder

    code, out, err = main(capsys, "embed", str(minilm_path), "first text", "second text")
    assert code == 0 and "2 vector(s) of 384 dims" in err
    rows = [[float(x) for x in line.split()] for line in out.splitlines()]
    expected = load_embedder(minilm_path, device="cpu").embed(["first text", "second text"])
    assert torch.allclose(torch.tensor(rows), expected, atol=1e-5)
    code, out, _ = main(capsys, "embed", str(minilm_path), "first text", "--json")
    data = json.loads(out)
    assert (data["model"], data["dim"], len(data["embeddings"][0])) == ("all-MiniLM-L6-v2", 384, 384)


def test_embed_refuses_a_generator(capsys, smollm2_path):
    code, _, err = main(capsys, "embed", str(smollm2_path), "text")
    assert code == 1 and "error:" in err and "cannot make embeddings" in err and "minilm-l6" in err


def test_index_is_incremental(capsys, notes_db, minilm_path):
    root, db = notes_db
    code, out, _ = main(capsys, "rag", "index", str(root), "--db", db)
    assert code == 0 and "0 added, 0 updated, 3 unchanged, 0 removed; 0 chunks embedded" in out
    code, _, err = main(capsys, "rag", "index", str(root), "--db", db, "--embed-model", "gemma3-270m")
    assert code == 1 and "cannot make embeddings" in err


def test_search(capsys, notes_db):
    _, db = notes_db
    code, out, _ = main(capsys, "rag", "search", "how long do cats sleep", "--db", db, "--k", "2")
    assert code == 0 and out.splitlines()[0].split()[2:] == ["cats.md", "[Cats]", "Sleep"]
    code, out, _ = main(capsys, "rag", "search", "pressure", "--db", db, "--mode", "sparse", "--json")
    hits = json.loads(out)
    assert [h["relpath"] for h in hits] == ["coffee/espresso.txt"] and hits[0]["tags"] == {"owner": "me"}
    code, out, _ = main(capsys, "rag", "search", "cats", "--db", db, "--where", "type=html", "--json")
    assert {h["relpath"] for h in json.loads(out)} == {"water.html"}
    code, _, err = main(capsys, "rag", "search", "cats", "--db", db, "--where", "oops")
    assert code == 1 and "key=value" in err


def test_missing_index_and_bare_rag(capsys, tmp_path):
    code, _, err = main(capsys, "rag", "search", "x", "--db", str(tmp_path / "none.db"))
    assert code == 1 and "no index at" in err and "rag index" in err
    code, out, _ = main(capsys, "rag")
    assert code == 2 and "index" in out and "eval" in out


@pytest.mark.slow
def test_ask_streams_an_answer_and_lists_sources(capsys, notes_db, smollm2_path):
    _, db = notes_db
    code, out, err = main(capsys, "rag", "ask", "At what temperature does water boil?", "--db", db, "--model",
                          str(smollm2_path), "-n", "8", "--k", "2")  # fmt: skip
    assert code == 0, err
    answer, _, sources = out.partition("\n\n")
    assert answer.strip() and "Water  (water.html)" in sources  # cited, word-matched or listed as retrieved
    assert "prompt tokens" in err
