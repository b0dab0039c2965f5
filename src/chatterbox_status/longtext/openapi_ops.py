"""OpenAPI operations of the long-text routes, for ``openapi._operations()`` to include:

    from .longtext.openapi_ops import operations as long_text_operations
    ops += long_text_operations()
"""

from __future__ import annotations

from typing import Any

JSON = "application/json"
JOB_ID = {"job_id": {"description": "A long-text job id, as POST /audio/speech/long returned it"}}
_OBJECT = {"type": "object"}
_STATUS = {"type": "string", "enum": ["pending", "chunking", "processing", "paused", "completed", "failed", "cancelled"]}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema or _OBJECT}}}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def operations() -> list[tuple[str, Any]]:
    from ..audio import CONTENT_TYPES
    from ..openapi import Operation
    from ..text import STRATEGIES

    prefix = "chatterbox_status.api.long_text."
    created = _json(
        "The job, accepted: its id, chunk count and estimate",
        {
            "type": "object",
            "required": ["job_id", "status", "total_chunks", "status_url", "sse_url"],
            "properties": {
                "job_id": {"type": "string"},
                "status": _STATUS,
                "message": {"type": "string"},
                "estimated_processing_time_seconds": {"type": ["integer", "null"], "minimum": 0},
                "total_chunks": {"type": "integer", "minimum": 1},
                "status_url": {"type": "string"},
                "sse_url": {"type": "string"},
            },
        },
    )
    quota = {"description": "LONG_TEXT_MAX_DISK_MB is used up", "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    request_body = _body(
        {
            "type": "object",
            "required": ["input"],
            "properties": {
                "input": {"type": "string", "minLength": 1, "description": "Up to LONG_TEXT_MAX_LENGTH characters"},
                "voice": {"type": "string"},
                "response_format": {"type": "string", "enum": list(CONTENT_TYPES), "default": "mp3"},
                "speed": {"type": "number", "minimum": 0.25, "maximum": 4.0},
                "exaggeration": {"type": "number", "minimum": 0.25, "maximum": 2.0},
                "cfg_weight": {"type": "number", "minimum": 0.0, "maximum": 1.0},
                "temperature": {"type": "number", "minimum": 0.05, "maximum": 5.0},
                "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
                "session_id": {"type": "string", "maxLength": 200},
                "chunking_strategy": {"type": "string", "enum": list(STRATEGIES)},
                "quality_preset": {"type": "string", "enum": ["fast", "balanced", "high"]},
                "chunk_size": {"type": "integer", "minimum": 20, "maximum": 1000},
                "silence_padding_ms": {"type": "integer", "minimum": 0, "maximum": 10000},
                "display_name": {"type": "string", "maxLength": 200},
            },
        }
    )
    listing = (
        _query("status", _STATUS, "Only jobs in this status"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}, "Jobs per page"),
        _query("offset", {"type": "integer", "minimum": 0}, "Jobs to skip"),
    )
    tag = "long-text"
    return [
        (prefix + "create_job", Operation("createLongTextJob", "Submit a long text to be spoken in the background", tag, {200: created, 507: quota}, (400, 404, 413, 415, 503), body=request_body)),
        (prefix + "list_jobs", Operation("listLongTextJobs", "List long-text jobs, newest first", tag, {200: _json("A page of jobs")}, (400,), listing)),
        (prefix + "history", Operation("listLongTextHistory", "Long-text job history, newest first", tag, {200: _json("A page of jobs")}, (400,), listing)),
        (prefix + "history_stats", Operation("longTextHistoryStats", "Statistics over all long-text jobs", tag, {200: _json("The statistics")})),
        (prefix + "clear_history", Operation("clearLongTextHistory", "Delete every finished long-text job and its audio", tag, {200: _json("How many jobs were removed")}, (400,), (_query("confirm", {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no", "on", "off"]}, "Must be true"),))),
        (prefix + "bulk", Operation("bulkLongTextAction", "Apply one action to several long-text jobs", tag, {200: _json("What succeeded and what failed")}, (400, 413, 415), body=_body({"type": "object", "required": ["job_ids", "action", "confirm"], "properties": {"job_ids": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 100}, "action": {"type": "string", "enum": ["delete", "retry", "cancel", "pause", "resume"]}, "confirm": {"type": "boolean"}}}))),
        (prefix + "job_status", Operation("getLongTextJob", "A long-text job's status and progress", tag, {200: _json("The job")}, (404,), path_params=JOB_ID)),
        (prefix + "job_details", Operation("getLongTextJobDetails", "A long-text job with every chunk's state", tag, {200: _json("The job and its chunks")}, (404,), path_params=JOB_ID)),
        (prefix + "download", Operation("downloadLongTextJob", "The finished audio (Range requests supported)", tag, {200: {"description": "The audio in the job's response_format", "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(set(CONTENT_TYPES.values()))}}, 206: {"description": "The requested byte range"}}, (404, 409, 500), path_params=JOB_ID)),
        (prefix + "pause", Operation("pauseLongTextJob", "Pause a pending or running job", tag, {200: _json("The job, paused")}, (404, 409), path_params=JOB_ID)),
        (prefix + "resume", Operation("resumeLongTextJob", "Resume a paused job", tag, {200: _json("The job, pending again")}, (404, 409), path_params=JOB_ID)),
        (prefix + "retry", Operation("retryLongTextJob", "Continue a failed or cancelled job from its last finished chunk", tag, {200: created}, (400, 404, 409, 413, 415), body=_body({"type": "object", "properties": {"preserve_chunks": {"type": "boolean", "const": True}}}, required=False), path_params=JOB_ID)),
        (prefix + "cancel_or_delete", Operation("cancelLongTextJob", "Cancel a job (action=cancel) or remove it and its files (action=delete)", tag, {200: _json("What was done")}, (400, 404, 409), (_query("action", {"type": "string", "enum": ["cancel", "delete"], "default": "cancel"}, "cancel or delete"),), path_params=JOB_ID)),
        (prefix + "update", Operation("updateLongTextJob", "Rename or tag a job", tag, {200: _json("The job's status")}, (400, 404, 413, 415), body=_body({"type": "object", "additionalProperties": False, "properties": {"display_name": {"type": "string", "maxLength": 200}, "tags": {"type": "array", "items": {"type": "string", "maxLength": 50}, "maxItems": 20}, "is_archived": {"type": "boolean"}}}), path_params=JOB_ID)),
        (prefix + "job_sse", Operation("streamLongTextJob", "A job's progress as Server-Sent Events", tag, {200: {"description": "progress events, then completed, error, cancelled or paused", "content": {"text/event-stream": {"schema": {"type": "string"}}}}}, (404,), path_params=JOB_ID)),
    ]
