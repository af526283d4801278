"""The app factory: `create_app(settings)` wires HTTP to the engine, the cache and the metrics.

    service/
      app.py          this factory: routers, error handlers, middleware, lifespan
      lifespan.py     start-up and shut-down, each step a named function
      state.py        AppState: what one running app holds; model work off the event loop
      deps.py         typed dependencies: the state, the loaded engine, the API key
      middleware.py   admission control, body limit, request metrics
      handlers.py     errors -> JSON responses, in one place
      answers.py      predictions through the cache (single flight, batched misses)
      routes/         predictions, explanations, entities, operations
      engine.py       the engine (no HTTP): retrieval + exact rescoring; names.py, added.py
      index.py        the FAISS candidate index; cache.py, entities.py: Redis / in-process

Model and FAISS work runs in a thread pool of IMF_WORKERS, with IMF_TORCH_THREADS /
IMF_FAISS_THREADS each, so concurrent requests neither block the event loop nor oversubscribe
the CPU. Every error leaves as a JSON body (service.handlers); never a stack trace.
"""

from __future__ import annotations

from fastapi import FastAPI

from model import __version__
from service.handlers import install_error_handlers
from service.lifespan import Loader, default_loader, lifespan
from service.metrics import Metrics
from service.middleware import Admission, ApiKey, BodyLimit, Observe, SecurityHeaders, TrustedHost
from service.routes import entities, explanations, operations, predictions
from service.routes.operations import OPEN_PATHS, mount_docs_assets
from service.settings import Settings

def create_app(settings: Settings | None = None, *, loader: Loader = default_loader) -> FastAPI:
    """The app for `settings` (default: from IMF_* variables). `loader` builds the Predictor
    (tests pass a small one); it runs in the lifespan, off the event loop."""
    settings = settings or Settings()
    metrics = Metrics()
    app = FastAPI(
        title="IMF link prediction",
        version=__version__,
        description="Multimodal knowledge-graph link prediction with IMF: FAISS retrieval, exact decision-fusion rescoring, explanations, cache.",
        lifespan=lifespan(settings, metrics, loader),
        docs_url=None,  # service.routes.operations serves /docs from local assets
        redoc_url=None,  # ReDoc would come from a CDN: not served
    )
    install_error_handlers(app)
    app.include_router(operations.public)
    for resource in (predictions, explanations, entities, operations):
        app.include_router(resource.router)
    mount_docs_assets(app)
    # Added innermost first: a request meets them in the opposite order (service.middleware).
    app.add_middleware(Observe, metrics=metrics)
    app.add_middleware(Admission, get_state=lambda: getattr(app.state, "imf", None))  # only for a whole body, key checked
    app.add_middleware(BodyLimit, settings=settings)  # the whole body in time, before parsing
    app.add_middleware(ApiKey, settings=settings, open_paths=OPEN_PATHS)  # before anything is read
    app.add_middleware(SecurityHeaders)
    app.add_middleware(TrustedHost, allowed=settings.allowed_hosts)  # outermost
    return app
