"""What every route module shares: the error responses documented in the OpenAPI schema."""

from __future__ import annotations

from service.schemas import ErrorResponse

ERRORS: dict[int | str, dict] = {status: {"model": ErrorResponse} for status in (401, 404, 422, 503)}
