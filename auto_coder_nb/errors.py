"""Typed errors. Every message is meant to be shown to a user as is, and never holds a secret."""

from __future__ import annotations


class AutoCoderError(Exception):
    """Base of the errors this package raises on purpose."""


class ConfigError(AutoCoderError):
    """Bad configuration: a usage error (exit code 2)."""


class ProviderError(AutoCoderError):
    """The model endpoint failed. `retryable` says whether trying again may help."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConnectionFailed(ProviderError):
    retryable = True


class ConnectionRefused(ConnectionFailed):
    """Nothing listens at the address: worth one quick retry (a server starting up), not four."""


class HostNotFound(ConnectionFailed):
    """The host name does not resolve (DNS): like a refused connection, one quick retry, not four."""


class RequestTimeout(ProviderError):
    retryable = True


class AuthenticationFailed(ProviderError):
    pass


class ModelNotFound(ProviderError):
    pass


class EndpointNotFound(ProviderError):
    """The URL answered 404 (or redirected): llm.base_url is probably wrong."""


class ContextOverflow(ProviderError):
    pass


class RateLimited(ProviderError):
    retryable = True


class ServerError(ProviderError):
    retryable = True


class BadRequest(ProviderError):
    pass


class ToolsNotSupported(BadRequest):
    """The server or model refused a request with `tools`: it has no native tool calling.
    `server_message` is what the server said (redacted)."""

    def __init__(self, message: str, *, status: int | None = None, server_message: str = "") -> None:
        super().__init__(message, status=status)
        self.server_message = server_message


class StreamError(ProviderError):
    """The stream broke or carried an error object."""


class StreamCutOff(StreamError):
    """The stream ended without finish_reason or [DONE]: what arrived may be only part of the answer."""


class TLSError(ProviderError):
    pass
