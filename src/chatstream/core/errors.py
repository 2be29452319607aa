"""The error tree of chatstream's core.

Two kinds of failure are kept apart, as h11 does:

* :class:`LocalProtocolError`: the caller asked for something the core cannot do in its
  current state (a second turn while one is in flight, feedback on an unknown message id,
  a request id used twice). The caller can fix it; the HTTP adapter maps it to a 4xx using
  :attr:`ChatStreamError.status_hint`.
* :class:`RemoteProtocolError`: the model side misbehaved (tokens for a step that was
  never planned, a result for an unknown request).

Expected outcomes (a full queue, a client that went away, a model error for one request)
are *events*, never exceptions.
"""

from __future__ import annotations

__all__ = [
    "ChatStreamError",
    "ConfigError",
    "LocalProtocolError",
    "NothingToRegenerateError",
    "PromptTooLongError",
    "RemoteProtocolError",
    "TurnInFlightError",
    "UnknownMessageError",
]


class ChatStreamError(Exception):
    """Base class of every error raised by chatstream.

    Attributes:
        status_hint: the HTTP status an adapter should answer with when this error
            reaches a client. The core knows nothing of HTTP; this is only a hint.
    """

    status_hint: int = 500

    def __init__(self, message: str, *, status_hint: int | None = None) -> None:
        super().__init__(message)
        if status_hint is not None:
            self.status_hint = status_hint


class ConfigError(ChatStreamError, ValueError):
    """An option has an invalid value.

    Attributes:
        option: the name of the offending option, as the user spelled it.
    """

    status_hint = 400

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


class LocalProtocolError(ChatStreamError):
    """The caller used the core in a way its current state does not allow."""

    status_hint = 400


class TurnInFlightError(LocalProtocolError):
    """A conversation already has a turn being generated; a second one is refused."""

    status_hint = 409


class NothingToRegenerateError(LocalProtocolError):
    """Regenerate was asked for a conversation with no user turn to answer again."""

    status_hint = 400


class UnknownMessageError(LocalProtocolError):
    """A message id that this conversation never had."""

    status_hint = 404


class PromptTooLongError(LocalProtocolError):
    """The prompt cannot fit the context even after dropping every older turn."""

    status_hint = 400


class RemoteProtocolError(ChatStreamError):
    """The model side sent something that does not fit what was asked of it."""

    status_hint = 500
