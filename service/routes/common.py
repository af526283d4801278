"""What every route module shares: the error responses documented in the OpenAPI schema."""

from __future__ import annotations

from service.schemas import ErrorResponse

ERRORS: dict[int | str, dict] = {status: {"model": ErrorResponse} for status in (401, 404, 422, 503)}

# Routes that resolve entity or relation names: also 409 for a name several of them share.
NAME_ERRORS: dict[int | str, dict] = {
    **ERRORS,
    409: {"model": ErrorResponse, "description": "a name several entities (or relations) share, type ambiguous_name: the candidates, to ask again by id"},
}
