"""The routes' dependencies, as typed `Annotated` aliases: the app state, the loaded engine
(503 until it is), and the API key check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from service.engine import Predictor
from service.errors import NotReady, Unauthorized
from service.state import AppState


def get_state(request: Request) -> AppState:
    return request.app.state.imf


StateDep = Annotated[AppState, Depends(get_state)]


def get_predictor(state: StateDep) -> Predictor:
    if state.predictor is None:
        # Terse on purpose: the exception text (paths, internals) goes to the log only.
        raise NotReady("model failed to load; see the server log" if state.load_error else "model is loading")
    return state.predictor


PredictorDep = Annotated[Predictor, Depends(get_predictor)]


def require_key(request: Request, state: StateDep) -> None:
    """IMF_API_KEY, when set, must come as `X-API-Key: KEY` or `Authorization: Bearer KEY`."""
    expected = state.settings.api_key
    if expected is None:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given is None or not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise Unauthorized("missing or wrong API key (send X-API-Key or Authorization: Bearer)")


KeyRequired = Depends(require_key)  # for a router's or route's `dependencies=[...]`
