"""What constrains a job's sampling: its tools (described in the prompt, calls grammar-constrained) or
its `response_format` (a JSON grammar), compiled to GBNF on the worker."""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF

from server.engine.json_grammar import schema_to_gbnf
from server.engine.params import SamplingParams
from server.engine.tools import call_grammar, with_tools
from server.errors import InvalidRequestError
from server.queue.messages import Job
from server.schema_limits import check_schema
from server.tool_format import CALL_OPEN


def constrained(job: Job) -> tuple[list[dict[str, Any]], SamplingParams]:
    """The job's messages (with its tools described) and its sampling parameters with their grammar."""
    params = job.params
    messages = job.messages or []
    if job.tools and job.tool_choice is not None:
        messages = with_tools(messages, job.tools, job.tool_choice)
        grammar = call_grammar(job.tools, job.tool_choice, parallel=job.parallel_tool_calls)
        trigger = CALL_OPEN if job.tool_choice == "auto" else None
        params = params.model_copy(update={"grammar": grammar, "grammar_trigger": trigger})
    elif job.response_format is not None:
        params = params.model_copy(update={"grammar": grammar_for(job.response_format)})
    return messages, params


def grammar_for(response_format: dict[str, Any]) -> str | None:
    """GBNF for an OpenAI `response_format`; InvalidRequestError for a schema that cannot be compiled."""
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_GBNF
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema", {"type": "object"})
    check_schema(schema, "response_format.json_schema.schema")  # the gateway checked; a guard for any other
    try:
        return schema_to_gbnf(json.dumps(schema))
    except Exception as exc:
        raise InvalidRequestError(f"The JSON schema cannot be enforced: {exc}", param="response_format") from None
