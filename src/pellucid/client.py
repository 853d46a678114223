"""A model that a pellucid server holds, used from another process: what `pellucid run` and `chat` answer
with when a server already has the model loaded (pellucid.servers finds it).

`RemoteLLM` has the part of `LLM`'s interface that the command line uses (chat, generate, reset, name, ctx,
device, has_chat_template) and returns the same `Generation` objects, filled from the server's OpenAI API:
/v1/chat/completions or /v1/completions, streamed as server-sent events, with `return_token_ids` so that
`--json` gets the token ids, and the server's `timings` for honest tok/s.

Standard library only (http.client), and never torch: `pellucid run` through a server must start, ask and
print in a fraction of a second.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator

from pellucid.engine.results import Chunk, Generation, GenerationStats
from pellucid.errors import PellucidError
from pellucid.servers import Entry

CONNECT_TIMEOUT_S = 10.0


class ServerGone(PellucidError):
    """The server did not take the request (it exited, or is exiting): nothing was generated."""


class RemoteLLM:
    """The chat model `model` (an entry of `entry.models`) of the running server `entry`."""

    def __init__(self, entry: Entry, model: dict, *, api_key: str | None = None):
        self.entry = entry
        self.name = model["name"]
        self.ctx = int(model["ctx"])
        self.device = model["device"]
        self.has_chat_template = bool(model.get("chat_template", True))
        self.api_key = api_key

    def describe(self) -> str:
        return self.entry.describe()

    def reset(self) -> None:
        """Nothing to do: the conversation lives in the client, and the server's cache follows the prompts."""

    def chat(self, messages: list[dict], *, stop=None, max_tokens=None, ignore_eos=False, **sampling) -> Generation:
        """Answer `messages`, as `LLM.chat` does (the server applies the chat template). `schema=` and
        `grammar=` (text) go as llama-server's json_schema / grammar fields."""
        body = {"messages": messages, **self._options(stop, max_tokens, ignore_eos, sampling)}
        return self._post("/v1/chat/completions", body, max_tokens)

    def generate(self, prompt: str, *, stop=None, max_tokens=None, ignore_eos=False, **sampling) -> Generation:
        """Complete `prompt` as is, as `LLM.generate` does."""
        body = {"prompt": prompt, **self._options(stop, max_tokens, ignore_eos, sampling)}
        return self._post("/v1/completions", body, max_tokens)

    def _options(self, stop, max_tokens, ignore_eos: bool, sampling: dict) -> dict:
        sampling = dict(sampling)
        if sampling.get("schema") is not None:
            sampling["json_schema"] = sampling.pop("schema")
        if not isinstance(sampling.get("grammar", ""), str | None):
            raise PellucidError("grammar= must be grammar text (GBNF or Lark) when a server answers")
        sampling = {k: v for k, v in sampling.items() if v is not None}
        options = {"model": self.name, "stream": True, "return_token_ids": True, **sampling}
        if max_tokens is not None and max_tokens >= 0:  # negative, as in-process: no limit but the context
            options["max_tokens"] = max_tokens
        if stop:
            options["stop"] = [stop] if isinstance(stop, str) else list(stop)
        if ignore_eos:
            options["ignore_eos"] = True
        return options

    def _post(self, path: str, body: dict, max_tokens: int | None) -> Generation:
        """Send the request; a refusal (bad sampling options, a prompt longer than the context, a missing API
        key) raises PellucidError with the server's message, before any text."""
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        conn = http.client.HTTPConnection(self.entry.connect_host, self.entry.port, timeout=CONNECT_TIMEOUT_S)
        started = time.perf_counter()
        try:
            # One send for headers and body (bytes): no wait for a delayed ACK between them.
            conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
            response = conn.getresponse()
        except OSError as e:
            conn.close()
            raise ServerGone(f"{self.describe()} did not take the request ({e})") from None
        if response.status != 200:
            message = self._refusal(response)
            conn.close()
            raise PellucidError(message)
        conn.sock.settimeout(None)  # from here on the server may think for as long as a prefill takes
        return RemoteGeneration(conn, response, started=started, ctx=self.ctx, max_tokens=max_tokens)

    def _refusal(self, response: http.client.HTTPResponse) -> str:
        try:
            message = json.loads(response.read())["error"]["message"]
        except (ValueError, KeyError, TypeError, OSError):
            message = f"HTTP {response.status} {response.reason}"
        if response.status == 401:
            what = "refused the key in $PELLUCID_API_KEY" if self.api_key else "needs an API key"
            return (
                f"{self.describe()} {what}: set PELLUCID_API_KEY to the key it was started with, or answer "
                f"in-process with --local"
            )
        return message


class RemoteGeneration(Generation):
    """A `Generation` read from the server's event stream. Closing it (Ctrl-C, breaking out of the loop) closes
    the connection, and the server cancels the generation."""

    def __init__(self, conn, response, *, started: float, ctx: int, max_tokens: int | None):
        super().__init__(self._read(conn, response, started, ctx, max_tokens), [], GenerationStats())

    def _read(self, conn, response, started: float, ctx: int, max_tokens: int | None) -> Iterator[Chunk]:
        stats = self.stats
        try:
            for event in _events(response):
                if "error" in event:
                    raise PellucidError(f"the server failed: {event['error'].get('message')}")
                if "prompt_token_ids" in event:
                    self.prompt_ids = event["prompt_token_ids"]
                if not event.get("choices"):
                    continue
                choice = event["choices"][0]
                text = (choice["delta"].get("content") if "delta" in choice else choice.get("text")) or ""
                ids = choice.get("token_ids") or []
                if (text or ids) and not stats.ttft_s:
                    stats.ttft_s = time.perf_counter() - started  # what this client waited, HTTP included
                if text or ids:
                    yield Chunk(text, ids)
                if "timings" in event:
                    _fill(stats, event["timings"], choice, ctx, max_tokens)
        except (OSError, http.client.HTTPException) as e:
            raise PellucidError(f"lost the connection to the server mid-answer ({e})") from None
        finally:
            response.close()
            conn.close()
        yield Chunk("", [], stats=stats)


def _events(response) -> Iterator[dict]:
    """The JSON payloads of a server-sent event stream, until `data: [DONE]`."""
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _fill(stats: GenerationStats, timings: dict, choice: dict, ctx: int, max_tokens: int | None) -> None:
    """GenerationStats from the finished choice and llama-server's `timings`, as the engine counts them."""
    stats.cached_tokens = timings.get("cache_n", 0)
    stats.prompt_tokens = timings.get("prompt_n", 0) + stats.cached_tokens
    stats.generated_tokens = timings.get("predicted_n", 0)
    stats.prefill_s = timings.get("prompt_ms", 0) / 1000
    stats.decode_s = timings.get("predicted_ms", 0) / 1000
    finish, stop = choice.get("finish_reason"), choice.get("stop_reason")
    if finish == "stop":
        detail = f"stop string {stop!r}" if isinstance(stop, str) else f"token {stop}" if stop is not None else ""
        stats.stop_reason, stats.stop_detail = "stop", detail
    elif finish == "length" and max_tokens is not None and 0 <= max_tokens <= stats.generated_tokens:
        stats.stop_reason = "length"
    elif finish == "length":  # OpenAI has one reason for both; not max_tokens, so the context was full
        stats.stop_reason, stats.stop_detail = "context", f"the context of {ctx:,} tokens is full"
