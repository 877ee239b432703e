"""The Responses API (`/v1/responses`): items in, the one chat request through `Service`, events out, state in Redis."""
