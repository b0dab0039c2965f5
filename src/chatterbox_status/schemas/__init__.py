"""Request and response bodies as pydantic models, one module per resource.

They are plain data with no HTTP in them: planning validates with the request models,
the API renders the response models, and the OpenAPI document is generated from both.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


def first_problem(exc: ValidationError) -> tuple[str | None, str]:
    """(the field at fault, a message naming it and what was sent) for the first error."""
    first = exc.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or None
    if first["type"] == "literal_error" and location:
        return location, f"{location} {first['input']!r} is not supported; use one of {first['ctx']['expected']}"
    message = "Field required" if first["type"] == "missing" else first["msg"]
    return location, f"{location}: {message}" if location else message


class Body(BaseModel):
    """A response body: only the fields declared here may be sent, so the document cannot
    fall behind what the handlers answer."""

    model_config = ConfigDict(extra="forbid")


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def sometimes(**kwargs: Any) -> Any:
    """A field that some bodies carry and others leave out (it is never sent as null)."""
    return Field(None, json_schema_extra=_drop_default, **kwargs)
