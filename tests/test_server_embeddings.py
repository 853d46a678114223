"""POST /v1/embeddings on `pellucid serve minilm-l6`, driven by the openai SDK.

The vectors themselves are checked against sentence-transformers in the embedding engine's own tests; here
the oracle is that engine in-process: the server must return exactly its vectors (float32 both ways), in
both of OpenAI's encodings, in input order, with the token counts it reports. The error for a model that
cannot embed (a text generator) is tested in test_server_openai.py.
"""

from __future__ import annotations

import importlib.util

import httpx
import openai
import pytest
import torch

from server_helpers import HTTP_TIMEOUT_S, running_server

TEXTS = ["The cat sat on the mat.", "A kitten rested on a rug.", "Stock markets fell sharply today.", "Hi"]

if importlib.util.find_spec("pellucid.engine.embed") is None:
    pytest.skip(
        "EMBEDDINGS SERVER TESTS SKIPPED: pellucid.engine.embed (the embedding engine) is not in this checkout",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def server(minilm_path):
    with running_server("minilm-l6") as s:
        yield s


@pytest.fixture(scope="module")
def embedder(minilm_path):
    from pellucid.engine.embed import load_embedder

    return load_embedder("minilm-l6")


def test_embeddings_match_the_engine(server, embedder):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    expected = embedder.embed(TEXTS)
    as_base64 = client.embeddings.create(model="minilm-l6", input=TEXTS)  # the SDK asks for base64 by default
    as_floats = client.embeddings.create(model="minilm-l6", input=TEXTS, encoding_format="float")
    for r in (as_base64, as_floats):
        assert [d.index for d in r.data] == list(range(len(TEXTS)))
        got = torch.tensor([d.embedding for d in r.data])
        assert got.shape == (len(TEXTS), embedder.dim)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)  # float32 in, float32 out
        assert r.usage.prompt_tokens == sum(embedder.count_tokens(t) for t in TEXTS)
        assert r.model == "minilm-l6"
    one = client.embeddings.create(model="minilm-l6", input="Hi", encoding_format="float")
    torch.testing.assert_close(torch.tensor(one.data[0].embedding), expected[3], rtol=0, atol=1e-6)


def test_embedding_server_refuses_chat_and_bad_input(server):
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as http:
        chat = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 400 and "embedding model" in chat.json()["error"]["message"]
        assert http.post("/v1/embeddings", json={"input": []}).status_code == 400
        tokens = http.post("/v1/embeddings", json={"input": [1, 2, 3]})
        assert tokens.status_code == 400 and "token ids are not supported" in tokens.json()["error"]["message"]
        long = http.post("/v1/embeddings", json={"input": ["short", "word " * 300]})
        assert long.status_code == 400 and "input[1] is 302 tokens; minilm-l6 reads at most 256" in long.text
        dims = http.post("/v1/embeddings", json={"input": "hi", "dimensions": 7})
        assert dims.status_code == 400 and dims.json()["error"]["param"] == "dimensions"
        unknown = http.post("/v1/embeddings", json={"input": "hi", "model": "text-embedding-3-small"})
        assert unknown.status_code == 404
        health = http.get("/health").json()
        assert health["status"] == "ok" and health["model"] == "minilm-l6"
