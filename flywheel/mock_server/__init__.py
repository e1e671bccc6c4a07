"""An OpenAI-compatible API on loopback, for tests, benchmarks, demos and users' offline tests.

Real HTTP (starlette served by uvicorn), deterministic output: the same request gets the same
body except ids and timestamps. Chat Completions (tools, structured outputs, streaming), the
Responses API, legacy Completions, embeddings, models, files, fine-tuning jobs and speech.
Faults are injected per request with ``x-mock-*`` headers (see ``_faults``). Fine-tuning jobs
live through OpenAI's states on the server's clock (``FineTuneTiming``); the models they produce
answer from their training data. No training happens.

    from flywheel.mock_server import MockServer

    with MockServer() as server:
        client = openai.OpenAI(api_key="sk-test", base_url=server.base_url)
"""

from ._app import create_app
from ._fine_tune_timeline import FineTuneTiming
from ._server import MockServer, serve

__all__ = ["FineTuneTiming", "MockServer", "create_app", "serve"]
