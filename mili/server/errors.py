"""OpenAI-shaped errors (chapter 06): `{"error": {"message", "type", "param", "code"}}`.

Every failure a client can cause becomes an `APIError` with the HTTP status OpenAI uses, so
the official clients raise their usual exceptions (BadRequestError, NotFoundError, ...).
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          429: "rate_limit_error", 500: "internal_server_error", 503: "service_unavailable"}


class APIError(Exception):
    """A request the server refuses or could not serve; `status` is the HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.retry_after = status, message, param, code, retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "error"), "param": self.param,
                          "code": self.code if self.code is not None else self.status}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def from_validation_errors(errors: list[dict]) -> APIError:
    """Pydantic's error list -> one 400 naming the first offending field."""
    first = errors[0]
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = first.get("msg", "invalid request")
    if param:
        message = f"{param}: {message}"
    return bad_request(message, param)
