"""The HTTP server: an OpenAI- and Anthropic-compatible API over one model, and a web chat page.

    pellucid serve smollm2-135m            # then point the openai or anthropic SDK at http://127.0.0.1:8080/v1

From the socket inwards:
  app.py       routes, API keys, errors in each API's JSON shape, one log line per request
  openai.py    /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings: OpenAI's shapes
  anthropic.py /v1/messages: Anthropic's shapes and streaming event sequence
  schemas.py   the request bodies, and the 400s that say which field is wrong
  streams.py   a generation's updates from the worker thread to the client (SSE), cancelled on disconnect
  backend.py   the served models, their names, prompts, and the way into the scheduler
  metrics.py   GET /metrics in Prometheus' text format
  static/      the chat page: plain HTML, CSS and JavaScript
The generations themselves run in `pellucid.engine.scheduler` (continuous batching over --parallel slots).
"""

from pellucid.server.app import create_app
from pellucid.server.backend import Backend

__all__ = ["Backend", "create_app"]
