"""The error tree: local vs remote, and the HTTP status each one hints at."""

from __future__ import annotations

import pytest

from chatstream.core import (
    ChatStreamError,
    ConfigError,
    LocalProtocolError,
    NothingToRegenerateError,
    PromptTooLongError,
    RemoteProtocolError,
    TurnInFlightError,
    UnknownMessageError,
)


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (ConfigError("top_p", "must be in (0, 1]"), 400, ValueError),
        (LocalProtocolError("misuse"), 400, LocalProtocolError),
        (TurnInFlightError("busy"), 409, LocalProtocolError),
        (NothingToRegenerateError("empty"), 400, LocalProtocolError),
        (UnknownMessageError("who?"), 404, LocalProtocolError),
        (PromptTooLongError("long"), 400, LocalProtocolError),
        (RemoteProtocolError("model"), 500, ChatStreamError),
    ],
)
def test_status_hints(error: ChatStreamError, status: int, kind: type[Exception]) -> None:
    assert error.status_hint == status
    assert isinstance(error, kind)
    assert isinstance(error, ChatStreamError)


def test_status_hint_can_be_given_per_instance() -> None:
    error = ChatStreamError("busy", status_hint=503)
    assert error.status_hint == 503
    assert ChatStreamError("plain").status_hint == 500
    assert str(ConfigError("top_k", "must be at least 1")) == "top_k: must be at least 1"
    assert ConfigError("top_k", "x").option == "top_k"
