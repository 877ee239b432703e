"""Function calling for local models: describe the tools in the prompt, constrain the call.

A call is written `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. With `tool_choice`
`required` or a named function the whole answer is grammar-constrained to well-formed calls whose
arguments follow each function's JSON schema; with `auto` the grammar wakes up lazily when the
model starts a call, so it may answer in text or call.
"""

from __future__ import annotations

import json
from typing import Any

from server.engine.json_grammar import schema_to_gbnf
from server.errors import InvalidRequestError
from server.schema_limits import Budget, check_schema
from server.tool_format import CALL_CLOSE, CALL_OPEN

MAX_PARALLEL_CALLS = 4


def tools_prompt(tools: list[dict[str, Any]], choice: Any) -> str:
    lines = [
        "You can call functions. To call one, answer with only",
        f'{CALL_OPEN}{{"name": <function name>, "arguments": <arguments as a JSON object>}}{CALL_CLOSE}',
        "and nothing else. The functions:",
    ]
    for tool in tools:
        fn = tool["function"]
        lines.append(json.dumps({"name": fn["name"], "description": fn.get("description", ""),
                                 "parameters": fn.get("parameters", {"type": "object"})}))
    if choice == "required":
        lines.append("You must call at least one function.")
    elif isinstance(choice, dict):
        lines.append(f"You must call the function {choice['function']['name']}.")
    return "\n".join(lines)


def with_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]], choice: Any) -> list[dict[str, Any]]:
    """The messages with the tool description merged into the system message."""
    text = tools_prompt(tools, choice)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _selected(tools: list[dict[str, Any]], choice: Any) -> list[dict[str, Any]]:
    if isinstance(choice, dict):
        return [t for t in tools if t["function"]["name"] == choice["function"]["name"]]
    return tools


def call_grammar(tools: list[dict[str, Any]], choice: Any, *, parallel: bool) -> str:
    """GBNF for one (or, with `parallel`, several) well-formed calls of the selected tools."""
    budget = Budget()  # the gateway checked; a guard for jobs from any other
    for i, tool in enumerate(tools):
        check_schema(tool["function"].get("parameters"), f"tools[{i}].function.parameters", budget)
    variants = [
        {"type": "object",
         "properties": {"name": {"const": t["function"]["name"]},
                        "arguments": t["function"].get("parameters") or {"type": "object"}},
         "required": ["name", "arguments"], "additionalProperties": False}
        for t in _selected(tools, choice)
    ]
    schema = variants[0] if len(variants) == 1 else {"oneOf": variants}
    try:
        body = schema_to_gbnf(json.dumps(schema), prop_order=["name", "arguments"])
    except Exception as exc:  # the converter raises several kinds for schemas it cannot handle
        raise InvalidRequestError(f"A tool's parameters cannot be enforced: {exc}", param="tools") from None
    body = body.replace("root ::=", "call ::=", 1)
    # a named function is called once; otherwise at most MAX_PARALLEL_CALLS calls in one answer
    repeat = f' ( "\\n" one ){{0,{MAX_PARALLEL_CALLS - 1}}}' if parallel and not isinstance(choice, dict) else ""
    return f'root ::= one{repeat}\none ::= "{CALL_OPEN}" call "{CALL_CLOSE}"\n{body}'
