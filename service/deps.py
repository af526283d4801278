"""The routes' dependencies, as typed `Annotated` aliases: the app state and the loaded engine
(503 until it is). The API key is checked before them, by service.middleware.ApiKey."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.engine import Predictor
from service.errors import NotReady
from service.state import AppState


# `async def`, though they never await: FastAPI runs a plain `def` dependency in a worker thread,
# two thread hops per request for two attribute reads (most of a cache hit's time).
async def get_state(request: Request) -> AppState:
    return request.app.state.imf


StateDep = Annotated[AppState, Depends(get_state)]


async def get_predictor(state: StateDep) -> Predictor:
    if state.predictor is None:
        # Terse on purpose: the exception text (paths, internals) goes to the log only.
        raise NotReady("model failed to load; see the server log" if state.load_error else state.loading)
    return state.predictor


PredictorDep = Annotated[Predictor, Depends(get_predictor)]
