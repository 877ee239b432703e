"""The gateway's security: API keys, per-key limits in Redis, request size limits.

    api_keys     load keys (env or file, plain or `sha256:` digests), constant-time check, masking
    rate_limits  per-key requests/minute, tokens/minute and concurrent requests, kept in Redis
    windows      the sliding windows of requests and tokens, one Lua script each on Redis's clock
    usage        the tokens a request used, handed from the serving layer to the limiter
    middleware   the pure ASGI middleware applying all of it before the app sees a request
"""

from server.security.api_keys import ApiKeyConfigError, ApiKeys
from server.security.middleware import SecurityConfig, SecurityMiddleware

__all__ = ["ApiKeyConfigError", "ApiKeys", "SecurityConfig", "SecurityMiddleware"]
