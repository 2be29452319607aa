"""The interface the HTTP adapters are typed against: what they need of a chat service.

:class:`~chatstream.ChatStream` is one; so is anything else with these members (a test double,
a service that routes to several engines). The HTTP side (:mod:`chatstream.adapters.http`)
never imports the facade: it takes a :class:`ChatService` and calls only what is declared here,
which keeps the layers one-way (facade -> HTTP -> this interface -> driver and turn).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

from chatstream.core import ChatStreamConfig, Conversation, EngineStatistics
from chatstream.core.roles import ClientRoles

from .driver import RequestHandle
from .turn import Turn

__all__ = ["SHUTDOWN_ERROR", "ChatService"]

#: The error a request still running at the end of the shutdown drain ends with; each stream
#: format turns it into its final event (SSE ``error`` with reason ``shutdown``, an OpenAI
#: error chunk, the original's error mark).
SHUTDOWN_ERROR = "the server is shutting down"


class ChatService(Protocol):
    """A chat service: start turns of kept conversations, submit stateless message lists,
    report its load, and drain for shutdown. Entered with ``async with`` to run."""

    #: The validated configuration (defaults of the generation parameters, limits).
    config: ChatStreamConfig
    #: Who may call which API (browsers, agents, pass phrases).
    roles: ClientRoles
    #: The service's name in ``/get_load`` and ``/get_resource_usage``.
    name: str
    #: Where HTTP-side failures (a user callback that raised) are logged.
    logger: logging.Logger
    #: GPUs to report in ``/get_resource_usage``.
    num_gpus: int
    #: The model's name in the OpenAI-compatible API when the operator chose one (requests
    #: naming another model are then refused); None: the model's own name, any name taken.
    served_model_name: str | None

    @property
    def running(self) -> bool:
        """True between ``__aenter__`` and ``__aexit__``: requests can be submitted."""
        ...

    @property
    def draining(self) -> bool:
        """True once a drain was asked for (new requests get 503)."""
        ...

    @property
    def model_id(self) -> str:
        """The model's name as the OpenAI-compatible API reports it."""
        ...

    def statistics(self) -> EngineStatistics:
        """Running, waiting and capacity now, and the totals so far."""
        ...

    async def start_turn(
        self,
        conversation: Conversation,
        user_input: str | None,
        *,
        regenerate: bool = False,
        edit_message_id: str | None = None,
        generation_params: Mapping[str, object] | None = None,
    ) -> Turn:
        """Start one turn of ``conversation``; return once it is admitted or queued. With
        ``edit_message_id``, ``user_input`` is a new version of that user message.

        Raises:
            TurnInFlightError: the conversation has a turn running.
            NothingToRegenerateError: regenerate with no user message.
            UnknownMessageError: ``edit_message_id`` is no user message on the path.
            ConfigError: invalid generation parameters.
            PromptTooLongError: the turn does not fit the context.
            RequestRejected: queue full, draining or model gone.
        """
        ...

    async def submit_messages(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        generation_params: Mapping[str, object] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> RequestHandle:
        """Stateless generation for OpenAI-style messages; the request's handle.

        Raises:
            ConfigError, PromptTooLongError, RequestRejected: as :meth:`start_turn`.
        """
        ...

    async def submit_prompt(
        self,
        prompt: str | Sequence[int],
        *,
        generation_params: Mapping[str, object] | None = None,
    ) -> RequestHandle:
        """Stateless generation continuing a raw prompt (text or token ids).

        Raises:
            ConfigError, PromptTooLongError, RequestRejected: as :meth:`start_turn`.
        """
        ...

    @property
    def vocab_size(self) -> int:
        """Token ids a client may name are below this."""
        ...

    def check_token_ids(self, option: str, token_ids: Sequence[int]) -> None:
        """Refuse ids outside the vocabulary with a ConfigError naming ``option``."""
        ...

    def token_piece(self, token_id: int) -> tuple[str, bytes]:
        """One token's text and exact bytes, for log-probabilities."""
        ...

    def render_history(self, conversation: Conversation) -> str | None:
        """The conversation as the prompt class renders it (None when empty)."""
        ...

    @property
    def max_model_len(self) -> int:
        """Prompt plus reply tokens one request may hold (the context length in force)."""
        ...

    async def tokenize(
        self,
        prompt: str | Sequence[Mapping[str, str]],
        *,
        add_special_tokens: bool | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """The token ids of a text, or of ``{"role", "content"}`` messages rendered as
        :meth:`submit_messages` renders them; tokenized off the event loop.

        Raises:
            ConfigError: text the tokenizer refuses, or malformed messages.
        """
        ...

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of token ids (special tokens skipped); decoded off the event loop.

        Raises:
            ConfigError: an id outside the vocabulary (the option named ``tokens``).
        """
        ...

    def start_drain(self) -> None:
        """Admit nothing new; safe to call from a signal handler."""
        ...

    async def drain(self, timeout: float) -> bool:
        """Admit nothing new and wait up to ``timeout`` seconds for work to end; what is
        left then ends with :data:`SHUTDOWN_ERROR`. True if everything ended in time."""
        ...

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
