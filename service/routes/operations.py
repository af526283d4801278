"""Operations: liveness and readiness (open to anyone, terse), the explorer page, and behind
the API key (when one is set) the served model's description (/info), Prometheus metrics
(/metrics) and the interactive API docs (/docs: Swagger UI from the app's own copy of its
assets, nothing from a CDN; the schema itself is /openapi.json)."""

from __future__ import annotations

import functools
from pathlib import Path

import swagger_ui_bundle
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from model import __version__
from service.deps import PredictorDep, StateDep

STATIC = Path(__file__).resolve().parent.parent / "static"
DOCS_ASSETS = "/docs/assets"

# Open to anyone even with IMF_API_KEY set (service.middleware.ApiKey): liveness, readiness and
# the explorer page (which asks for the key itself before it calls the API).
OPEN_PATHS = ("/", "/health", "/ready")

public = APIRouter()
router = APIRouter()


@public.get("/health", summary="Liveness: the process answers")
async def health() -> dict:
    return {"status": "ok"}


@public.get("/ready", summary="Readiness: model, index and cache status (503 until loaded, and with IMF_ALLOW_NEW_ENTITIES until the text encoder is too)")
async def ready(state: StateDep) -> JSONResponse:
    cache = await state.cache.status()
    state.metrics.cache_up.set(1 if cache.get("ok") else 0)
    # Open to anyone, so terse: no paths, no exception text (the server log has them).
    body = {
        "ready": state.predictor is not None,
        "model": state.predictor.bundle.fingerprint if state.predictor else None,
        "cache": {k: v for k, v in cache.items() if k in ("backend", "ok", "circuit")},
    }
    if state.predictor is None:
        body["error"] = "model failed to load; see the server log" if state.load_error else state.loading
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse(body)


@public.get("/", include_in_schema=False)
async def explorer() -> HTMLResponse:
    """The explorer page (service/static/explorer.html): no build step, nothing from a CDN.

    Answered from memory in one message, not streamed from the file by a worker thread: a
    streamed file response behind the request-metrics middleware was once cut short on CI
    ("Response content shorter than Content-Length") and the page never came up."""
    return HTMLResponse(explorer_page())


@functools.cache
def explorer_page() -> bytes:
    return (STATIC / "explorer.html").read_bytes()


@router.get("/info", summary="The served model: fingerprint, dataset, branches, metrics")
async def info(state: StateDep, p: PredictorDep) -> dict:
    m = p.bundle.manifest
    return {
        "model": p.bundle.fingerprint,
        "dataset": m.get("dataset"),
        "branches": m.get("branches"),
        "modalities": m.get("modalities"),
        "metrics": m.get("metrics"),
        "index": {"kind": p.index_kind, "candidates": p.candidates if p.index is not None else p.num_entities},
        "calibration": (m.get("extras") or {}).get("calibration", {}).get("method"),
        "new_entities": {
            "enabled": bool(state.settings.allow_new_entities and p.bundle.feature_map is not None and not state.encoder_missing),
            "added": len(p.added.ids),
            "numeric_attributes": p.bundle.feature_map.numeric_attributes if p.bundle.feature_map else [],
        },
        "version": __version__,
    }


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    """Swagger UI for /openapi.json, its script and style served by the app (DOCS_ASSETS)."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json", title="IMF link prediction: API",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
    )


def mount_docs_assets(app: FastAPI) -> None:
    """Swagger UI's files, from the swagger-ui-bundle package (no CDN)."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
