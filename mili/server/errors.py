"""OpenAI-shaped errors (chapter 06): `{"error": {"message", "type", "param", "code"}}`.

Every failure a client can cause becomes an `APIError` with the HTTP status OpenAI uses, so
the official clients raise their usual exceptions (BadRequestError, NotFoundError, ...). A 500
says only "internal error" and the request id: what went wrong goes to the server log, under that
id, never to the client.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "internal_server_error", 503: "service_unavailable"}
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


class APIError(Exception):
    """A request the server refuses or could not serve; `status` is the HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.retry_after = status, message, param, code, retry_after
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "error"), "param": self.param,
                          "code": self.code if self.code is not None else self.status}}

    def response(self) -> JSONResponse:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def internal_error(request_id: str) -> APIError:
    """The 500 a client sees: no exception type, no message, just where to look in the log."""
    return APIError(500, f"internal error; the server log has the details under request id {request_id}")


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def from_validation_errors(errors: list[dict]) -> APIError:
    """Pydantic's error list -> one 400 naming the first offending field."""
    first = errors[0]
    path = []
    for part in first.get("loc", ()):
        if isinstance(part, str) and (part in _TYPE_TAGS or "[" in part):
            break  # pydantic names the member of a union it tried ('str', 'list[int]'): not a field
        if part != "body":
            path.append(str(part))
    param = ".".join(path) or None
    message = first.get("msg", "invalid request")
    if len(errors) > 1 and param and all(e.get("loc", ())[:1] == first.get("loc", ())[:1] for e in errors):
        message = "not one of the accepted types"
    if param:
        message = f"{param}: {message}"
    return bad_request(message, param)
