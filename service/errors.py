"""The service's exception tree; `service.app` maps it to HTTP in one place.

    ServiceError
      NotFound        404  unknown entity or relation (carries close-name suggestions)
      Ambiguous       409  a name several entities (or relations) share (carries the candidates)
      InvalidRequest  422  a parameter out of range, a field naming the wrong thing
      NotReady        503  the model or index is still loading, or failed to load
      Overloaded      503  too much queued work, or a request waited past its time limit
      Forbidden       403  a disabled capability (adding entities without IMF_ALLOW_NEW_ENTITIES)
      TooManyEntities 409  IMF_MAX_NEW_ENTITIES entities are added already: nothing more is
      Unsupported     501  the bundle or the install lacks what a request needs (feature map, encoder)
      StoreUnavailable 503 the entity store (Redis) cannot be reached: nothing was added

The engine raises these (or `model.errors.UnknownNameError`, which becomes NotFound, and
`AmbiguousNameError`, which becomes Ambiguous) and never knows about HTTP status codes itself. What the middleware refuses before the app runs (401
without the API key, 400 for an untrusted Host, 408 for a slow body, 413, 503 when saturated)
it answers itself, with the same JSON body (service.middleware).
"""

from __future__ import annotations


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    retry_after: int | None = None  # seconds, sent as Retry-After
    candidates: list[dict[str, str]] | None = None  # what an ambiguous name may mean (Ambiguous)

    def __init__(self, message: str, *, field: str | None = None, suggestions: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.suggestions = suggestions


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Ambiguous(ServiceError):
    """A name several entities (or relations) share: which one is meant is the client's to say,
    by id. `candidates`: {"id", "name", "description"} of each (at most
    model.errors.MAX_CANDIDATES, most connected first; the message counts them all)."""

    status = 409
    code = "ambiguous_name"

    def __init__(self, message: str, *, field: str | None = None, candidates: list[dict[str, str]]) -> None:
        super().__init__(message, field=field)
        self.candidates = candidates


class InvalidRequest(ServiceError):
    status = 422
    code = "invalid_request"


class NotReady(ServiceError):
    status = 503
    code = "not_ready"
    retry_after = 5


class Overloaded(ServiceError):
    status = 503
    code = "overloaded"
    retry_after = 1


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class Unsupported(ServiceError):
    status = 501
    code = "not_implemented"


class StoreUnavailable(ServiceError):
    status = 503
    code = "store_unavailable"
    retry_after = 2


class TooManyEntities(ServiceError):
    """The store holds IMF_MAX_NEW_ENTITIES records: nothing more is added (every added entity
    is scored by every query, so their number bounds the latency of all of them)."""

    status = 409
    code = "too_many_entities"
