"""The HTTP app: routes, API keys, errors in each API's JSON shape, one log line per request, the web page.

    app = create_app(Backend(pellucid.load("smollm2-135m")), api_key="secret")
    uvicorn.run(app, host="127.0.0.1", port=8080)      # what `pellucid serve` does

Routes (each also without the /v1 prefix, as llama-server accepts them):
  GET  /                       the chat page (static/index.html)
  GET  /health                 {"status": "ok", ...}; 503 if the scheduler's worker died
  GET  /v1/models              OpenAI's model list (Anthropic's shape when the anthropic-version header is set)
  POST /v1/chat/completions    OpenAI chat (openai.py)
  POST /v1/completions         OpenAI text completion (openai.py)
  POST /v1/embeddings          OpenAI embeddings (openai.py)
  POST /v1/messages            Anthropic Messages (anthropic.py), and /v1/messages/count_tokens
  GET  /metrics                Prometheus text (metrics.py)

With an API key, everything but / (the page asks for the key), /static and /health needs it, as
`Authorization: Bearer KEY` (OpenAI clients) or `x-api-key: KEY` (Anthropic clients).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
import time
from pathlib import Path

from fastapi import Depends, FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pellucid import __version__
from pellucid.server import anthropic, openai
from pellucid.server.backend import Backend
from pellucid.server.errors import ApiError
from pellucid.server.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("pellucid.server")

STATIC = Path(__file__).parent / "static"


def create_app(backend: Backend, *, api_key: str | None = None) -> FastAPI:
    """The ASGI app serving `backend`. The scheduler starts and stops with the app (its lifespan)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        backend.start()
        try:
            yield
        finally:
            backend.stop()

    # No /docs: FastAPI's docs page loads its scripts from a CDN, and our bodies are parsed by hand anyway.
    app = FastAPI(title="pellucid", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip
    app.state.backend = backend
    app.state.metrics = Metrics()
    app.state.activity = Activity()
    app.state.started = int(time.time())
    keyed = [Depends(_key_checker(api_key))] if api_key else []

    for prefix in ("/v1", ""):
        app.add_api_route(f"{prefix}/models", models, methods=["GET"], dependencies=keyed)
        app.add_api_route(f"{prefix}/chat/completions", openai.chat_completions, methods=["POST"], dependencies=keyed)
        app.add_api_route(f"{prefix}/completions", openai.completions, methods=["POST"], dependencies=keyed)
        app.add_api_route(f"{prefix}/embeddings", openai.embeddings, methods=["POST"], dependencies=keyed)
    app.add_api_route("/v1/messages", anthropic.messages, methods=["POST"], dependencies=keyed)
    app.add_api_route("/v1/messages/count_tokens", anthropic.count_tokens, methods=["POST"], dependencies=keyed)
    app.add_api_route("/metrics", metrics, methods=["GET"], dependencies=keyed)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/", page, methods=["GET"])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    app.add_middleware(RequestLog, metrics=app.state.metrics, activity=app.state.activity)
    return app


class Activity:
    """When the server was last asked for something, for `serve --keep-alive` (exit after a while without a
    request). Probes do not count: /health (clients checking the server is there) and /metrics (scrapers)."""

    QUIET_PATHS = ("/health", "/metrics")

    def __init__(self):
        self.in_flight = 0
        self.last = time.monotonic()

    def idle_s(self) -> float:
        """Seconds since the last request ended; 0 while one runs (a long generation is not idleness)."""
        return 0.0 if self.in_flight else time.monotonic() - self.last


# -- small routes -------------------------------------------------------------------------------------------


async def health(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    body = {"status": "ok" if backend.healthy else "error", "model": backend.name}
    if backend.llm is not None:
        sched = backend.scheduler
        body |= {
            "context_length": backend.llm.ctx,
            "has_chat_template": backend.llm.has_chat_template,
            "slots": sched.slot_info(),
            "queue_depth": sched.queue_depth,
        }
    if not backend.healthy:
        body["error"] = "the scheduler's worker thread has stopped; restart the server (and see its log)"
    return JSONResponse(body, status_code=200 if backend.healthy else 503)


async def models(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    if "anthropic-version" in request.headers:  # the Anthropic SDK's models.list() reads its own shape
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(request.app.state.started))
        data = [{"type": "model", "id": m.name, "display_name": m.name, "created_at": created} for m in backend.models]
        return JSONResponse({"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]})
    return JSONResponse(openai.models_list(backend, request.app.state.started))


async def metrics(request: Request) -> Response:
    text = request.app.state.metrics.render(request.app.state.backend)
    return PlainTextResponse(text, media_type=CONTENT_TYPE)


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html")


def _key_checker(api_key: str):
    expected = api_key.encode()

    async def check_key(request: Request) -> None:
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), expected):
            what = "a wrong API key" if given else "no API key"
            raise ApiError(
                401,
                f"this server needs an API key and the request has {what}: send it as 'Authorization: Bearer "
                f"KEY' or 'x-api-key: KEY' (the key given to `pellucid serve --api-key`)",
                kind="authentication_error",
                code="invalid_api_key",
            )

    return check_key


# -- errors -------------------------------------------------------------------------------------------------


def error_response(request: Request, e: ApiError) -> JSONResponse:
    """`e` in the error shape of the API the client speaks (Anthropic's for /v1/messages, else OpenAI's)."""
    anthropic_client = request.url.path.startswith("/v1/messages")
    body = anthropic.error_body(e) if anthropic_client else openai.error_body(e)
    headers = {"Retry-After": "1"} if e.status == 429 else None
    return JSONResponse(body, status_code=e.status, headers=headers)


async def api_error(request: Request, e: ApiError) -> Response:
    return error_response(request, e)


async def http_error(request: Request, e: HTTPException) -> Response:
    """Starlette's own errors: unknown paths (404) and wrong methods (405)."""
    if e.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}; see GET / for the chat page, /v1/models"
    elif e.status_code == 405:
        message = f"{request.url.path} does not take {request.method}"
    else:
        message = str(e.detail)
    return error_response(request, ApiError(e.status_code, message, code=None))


async def internal_error(request: Request, e: Exception) -> Response:
    log.error("%s: internal error", request.scope.get("state", {}).get("request_id", ""), exc_info=e)
    message = f"internal error: {type(e).__name__}: {e}. This is a bug in pellucid; the server log has the traceback"
    return error_response(request, ApiError(500, message, kind="server_error"))


# -- the request log ----------------------------------------------------------------------------------------


class RequestLog:
    """ASGI middleware: gives each request an id (x-request-id), counts it, and logs one line when it ends:
    id, method, path, status, tokens in (cached) and out, decode tok/s, time to first token, duration."""

    def __init__(self, app: ASGIApp, metrics: Metrics, activity: Activity):
        self.app = app
        self.metrics = metrics
        self.activity = activity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        request_id = state["request_id"] = secrets.token_hex(6)
        started = time.perf_counter()
        status = 500
        counts = scope["path"] not in Activity.QUIET_PATHS
        if counts:
            self.activity.in_flight += 1

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if counts:
                self.activity.in_flight -= 1
                self.activity.last = time.monotonic()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static/") else "other")
            self.metrics.count_request(endpoint, status)
            self.metrics.embedded_tokens += state.get("embedded_tokens", 0)
            log.info("%s", log_line(request_id, scope, status, state, time.perf_counter() - started))


def log_line(request_id: str, scope: Scope, status: int, state: dict, seconds: float) -> str:
    line = f"{request_id} {scope['method']} {scope['path']} {status}"
    stream = state.get("generation")
    stats = getattr(stream, "stats", None)
    if stats is not None:
        cached = f" ({stats.cached_tokens} cached)" if stats.cached_tokens else ""
        line += (
            f" in={stats.prompt_tokens}{cached} out={stats.generated_tokens} {stats.decode_tok_s:.1f} tok/s"
            f" ttft={stats.ttft_s * 1000:.0f}ms {stats.stop_reason}"
        )
    elif stream is not None:
        line += " client disconnected; generation cancelled"
    if "embedded_tokens" in state:
        line += f" embedded={state['embedded_tokens']} tokens"
    return line + f" {seconds:.2f}s"
