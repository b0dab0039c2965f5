"""Request and response bodies as pydantic models, one module per resource.

They are plain data with no HTTP in them: planning validates with the request models,
the API renders the response models, and the OpenAPI document is generated from both.
"""

from __future__ import annotations

from pydantic import ValidationError


def first_problem(exc: ValidationError) -> tuple[str | None, str]:
    """(the field at fault, a message naming it and what was sent) for the first error."""
    first = exc.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or None
    if first["type"] == "literal_error" and location:
        return location, f"{location} {first['input']!r} is not supported; use one of {first['ctx']['expected']}"
    message = "Field required" if first["type"] == "missing" else first["msg"]
    return location, f"{location}: {message}" if location else message
