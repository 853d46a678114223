"""One generation's way from the scheduler's worker thread to an HTTP client, and back when the client leaves.

- `Stream` receives the scheduler's Updates on the worker thread and hands them to the event loop with
  `loop.call_soon_threadsafe` (asyncio objects are not thread-safe); routes iterate it with `async for`.
- `EventStream` sends Server-Sent Events (`sse()` frames them). It watches for the client's disconnect
  itself, whatever the ASGI server's version, and cancels the generation, so a closed tab or a pressed
  stop button frees its slot within a step instead of generating to max_tokens for nobody.
- `until_done()` is the same watch for non-streaming requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from pellucid.engine.results import GenerationStats
from pellucid.engine.sampling import TokenLogprobs
from pellucid.engine.scheduler import Request as EngineRequest
from pellucid.engine.scheduler import Update


@dataclass
class Completion:
    """A whole generation, for non-streaming responses."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    stats: GenerationStats | None = None
    stop_string: str | None = None
    stop_token: int | None = None
    error: str | None = None


class Stream:
    """The Updates of one generation as an async iterator on the event loop; `cancel()` stops it."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._queue: asyncio.Queue[Update] = asyncio.Queue()
        self._finished = False
        self.request: EngineRequest | None = None  # set once the scheduler accepted it
        self.stats: GenerationStats | None = None  # the final stats, once they arrive

    def put(self, update: Update) -> None:
        """The scheduler's on_update callback (worker thread)."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, update)

    def cancel(self) -> None:
        if self.request is not None and not self._finished:
            self.request.cancel()

    def __aiter__(self) -> AsyncIterator[Update]:
        return self

    async def __anext__(self) -> Update:
        if self._finished:
            raise StopAsyncIteration
        update = await self._queue.get()
        if update.final:
            self._finished = True
            self.stats = update.stats
        return update

    async def collect(self) -> Completion:
        out = Completion()
        async for update in self:
            out.text += update.text
            out.token_ids += update.token_ids
            out.logprobs += update.logprobs or []
            out.stats, out.stop_string, out.stop_token = update.stats, update.stop_string, update.stop_token
            out.error = update.error
        return out


def sse(data: dict | str, event: str | None = None) -> str:
    """One Server-Sent Event: `event: NAME` (Anthropic names its events; OpenAI does not) and `data: JSON`."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


class EventStream(StreamingResponse):
    """A text/event-stream response that cancels its generation when the client disconnects."""

    def __init__(self, events: AsyncIterator[str], stream: Stream):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tasks:

                async def send_all() -> None:
                    with contextlib.suppress(OSError):  # the socket broke while sending: the client is gone
                        await self.stream_response(send)
                    tasks.cancel_scope.cancel()

                tasks.start_soon(send_all)
                await _wait_for_disconnect(receive)
                tasks.cancel_scope.cancel()
        finally:
            self.stream.cancel()  # a no-op when the generation already finished


async def until_done(request: Request, stream: Stream) -> Completion | None:
    """The whole generation, or None (and the generation cancelled) if the client disconnects first."""
    result: Completion | None = None

    async def collect() -> None:
        nonlocal result
        result = await stream.collect()
        tasks.cancel_scope.cancel()

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(collect)
            await _wait_for_disconnect(request.receive)
            tasks.cancel_scope.cancel()
    finally:
        if result is None:
            stream.cancel()
    return result


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
