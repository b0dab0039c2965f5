"""The one error body every failure is rendered as."""

from __future__ import annotations

from pydantic import Field

from . import Body


class ErrorDetail(Body):
    message: str = Field(description="What went wrong, for people")
    type: str = Field(description="The kind of error, e.g. invalid_request_error")
    param: str | None = Field(description="The field or parameter at fault")
    code: str | None = Field(description="A stable code for programs, when there is one")


class Error(Body):
    """``{"error": {"message", "type", "param", "code"}}``"""

    error: ErrorDetail
