"""Anthropic's Messages API as a front door: its wire models (`protocol`), their translation into the
one internal chat request (`translate`), the answer and the stream written back in Anthropic's shapes
(`answer`, `events`) and its error envelope (`errors`). Serving is `server.serving.service.Service`'s."""
