"""The `priority` extension, read the same way by every front door into the one internal request."""

from __future__ import annotations

from typing import Any

import pytest

from server.anthropic.protocol import MessagesRequest
from server.anthropic.translate import to_chat_request
from server.errors import InvalidRequestError
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.protocol_responses import ResponsesRequest
from server.queue import priority
from server.responses.items import read_input
from server.responses.translate import chat_request

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("given", "found"), [(None, None), (0, 0), (9, 9), ("batch", 2), ("default", 5),
                                              ("interactive", 8)])
def test_integers_and_named_classes(given: Any, found: int | None) -> None:
    assert priority.parse(given) == found
    assert ChatCompletionRequest.model_validate(
        {"model": "m", "messages": MESSAGES, "priority": given}).priority_class() == found
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x", "priority": given}).priority_class() == found


@pytest.mark.parametrize("given", [10, -1, "urgent", 2.5, True, [1]])
def test_anything_else_is_a_400_naming_priority(given: Any) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, "priority": given})
    assert refused.value.param == "priority"


def test_the_messages_and_responses_front_doors_pass_it_on() -> None:
    anthropic = MessagesRequest.model_validate({"model": "m", "max_tokens": 4, "messages": MESSAGES,
                                                "priority": "batch"})
    assert to_chat_request(anthropic).priority_class() == 2
    responses = ResponsesRequest.model_validate({"model": "m", "input": "hi", "priority": 8})
    body = chat_request(responses, read_input(responses.input))
    assert ChatCompletionRequest.model_validate(body).priority_class() == 8
