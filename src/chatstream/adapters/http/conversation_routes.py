"""Several conversations per session, and the versions of their messages, over HTTP.

``GET/POST /conversations``, ``PATCH/DELETE /conversations/{id}``, ``POST
/conversations/{id}/select`` (role API ``conversations``) and ``POST /switch_version`` (with
``chat_stream``). A session keeps its conversations in :class:`~.session_stores.SessionData`;
each is a :class:`~chatstream.core.Conversation`, a tree of messages with a current path. The
original's routes (``/chat_stream``, ``/get_history``, ...) take an optional
``conversation_id`` and use the session's current conversation without one.

Changes that could race a turn (a switch of versions, a delete) hold the session's turn lock,
as ``/clear_context`` does; a title or a system prompt does not, and a turn's save keeps
what such requests saved meanwhile (:meth:`SessionData.merge_turn`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatstream.core import Conversation, TurnInFlightError, UnknownMessageError

from .common import (
    BadRequest,
    RequestContext,
    error_response,
    forbidden,
    read_json_object,
    store_unavailable,
)
from .session_stores import SessionData, StoreUnavailable

if TYPE_CHECKING:
    from .original_api import HttpApi

__all__ = [
    "MAX_TITLE_CHARS",
    "ConversationsApi",
    "conversation_id_of",
    "find_conversation",
    "history_view",
]

#: Longest title a conversation takes (characters).
MAX_TITLE_CHARS = 200
_MAX_ID_CHARS = 64


def conversation_id_of(value: Any) -> str | None:
    """A ``conversation_id`` from a request (None when absent).

    Raises:
        BadRequest: not a short string.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID_CHARS:
        raise BadRequest(400, "invalid_field", "'conversation_id' must be a conversation's id")
    return value


def find_conversation(data: SessionData | None, conversation_id: str | None) -> Conversation:
    """The session's conversation with this id (None: the current one).

    Raises:
        BadRequest: 404 when the session has no such conversation.
    """
    conversation = None if data is None else data.get(conversation_id)
    if conversation is None:
        raise BadRequest(
            404, "unknown_conversation", f"no conversation {conversation_id!r} in this session"
        )
    return conversation


def history_view(data: SessionData | None, conversation_id: str | None) -> dict[str, Any]:
    """A conversation's id and its current path as JSON, each message with the ids of its
    versions (what ``/get_history`` and ``/switch_version`` answer).

    Raises:
        BadRequest: 404 when the session has no such conversation.
    """
    conversation = find_conversation(data, conversation_id)
    assert data is not None
    return {
        "conversation_id": conversation_id or data.current_id,
        "messages": [
            {**m.to_json(), "versions": [v.id for v in conversation.versions(m.id)]}
            for m in conversation.messages
        ],
    }


class ConversationsApi:
    """The handlers; one per :class:`~.original_api.HttpApi`."""

    def __init__(self, http: HttpApi) -> None:
        self.http = http

    async def list(self, request: Request) -> Response:
        """``GET /conversations``: most recently used first."""
        context = await self._context(request)
        if isinstance(context, Response):
            return context
        data = context.data
        if data is None:
            return JSONResponse({"success": True, "current": None, "conversations": []})
        entries = [_entry(key, c) for key, c in reversed(data.conversations.items())]
        return JSONResponse({"success": True, "current": data.current_id, "conversations": entries})

    async def create(self, request: Request) -> Response:
        """``POST /conversations``: a new conversation, current from now on."""

        async def create(context: RequestContext, body: Mapping[str, Any]) -> str:
            title, system = self._fields(body)
            fresh = context.data is None
            data = await context.data_for_writing()
            if data is None:
                raise BadRequest(400, "no_session", "conversations need a browser session")
            # A session made now already holds an empty conversation: that one it is.
            key = data.current_id if fresh else data.new_conversation()
            conversation = data.conversations[key]
            conversation.title = title.value if title is not None else None
            conversation.system = system.value if system is not None else None
            return key

        return await self._change(request, create)

    async def update(self, request: Request) -> Response:
        """``PATCH /conversations/{id}``: its title and system prompt."""

        async def update(context: RequestContext, body: Mapping[str, Any]) -> str:
            title, system = self._fields(body)
            key = str(request.path_params["conversation_id"])
            conversation = find_conversation(context.data, key)
            if title is not None:
                conversation.title = title.value
            if system is not None:
                conversation.system = system.value
            return key

        return await self._change(request, update)

    async def select(self, request: Request) -> Response:
        """``POST /conversations/{id}/select``: make it current."""

        async def select(context: RequestContext, body: Mapping[str, Any]) -> str:
            key = str(request.path_params["conversation_id"])
            find_conversation(context.data, key)
            assert context.data is not None
            context.data.current_id = key
            return key

        return await self._change(request, select)

    async def delete(self, request: Request) -> Response:
        """``DELETE /conversations/{id}``; 409 while a reply streams in the session."""
        key = request.path_params["conversation_id"]

        def forget(data: SessionData) -> None:
            if find_conversation(data, key).in_flight:
                raise TurnInFlightError("a reply is being generated")
            data.delete(key)

        return await self._locked_change(request, forget, lambda data: {"current": data.current_id})

    async def switch_version(self, request: Request) -> Response:
        """``POST /switch_version``: make the branch through a message current."""
        try:
            body = await read_json_object(request, None, self.http.options)
        except BadRequest as error:
            return error.response()
        message_id = body.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            return error_response(400, "missing_message_id", "'message_id' must be a string")
        try:
            key = conversation_id_of(body.get("conversation_id"))
        except BadRequest as error:
            return error.response()

        def switch(data: SessionData) -> None:
            find_conversation(data, key).switch_to(message_id)

        return await self._locked_change(
            request, switch, lambda data: history_view(data, key), api_name="chat_stream"
        )

    # ------------------------------------------------------------------ internals

    async def _context(
        self, request: Request, api_name: str = "conversations"
    ) -> RequestContext | Response:
        context = await RequestContext.of(request, self.http.roles, create_session=False)
        if not context.allows(api_name):
            return forbidden()
        return context

    async def _change(
        self,
        request: Request,
        change: Callable[[RequestContext, Mapping[str, Any]], Awaitable[str]],
    ) -> Response:
        # A change that cannot race a turn's messages: no lock; a turn that saves later
        # keeps it (SessionData.merge_turn). Answers the conversation it changed.
        try:
            # The body first: the session is loaded after it, and saved at once after the
            # change, so that a turn's save between the two is as unlikely as can be.
            body = await read_json_object(request, None, self.http.options)
        except BadRequest as error:
            return error.response()
        context = await self._context(request)
        if isinstance(context, Response):
            return context
        try:
            key = await change(context, body)
            assert context.data is not None and context.session is not None
            await context.session.save()
        except BadRequest as error:
            return error.response()
        except StoreUnavailable as error:
            return store_unavailable(error)
        entry = _entry(key, context.data.conversations[key])
        return JSONResponse({"success": True, "conversation": entry})

    async def _locked_change(
        self,
        request: Request,
        change: Callable[[SessionData], None],
        view: Callable[[SessionData], dict[str, Any]],
        *,
        api_name: str = "conversations",
    ) -> Response:
        # Under the session's turn lock, on the freshest data: no turn (here or on another
        # node) may save over this change, nor this change over a turn.
        context = await self._context(request, api_name)
        if isinstance(context, Response):
            return context
        try:
            if context.data is None or context.session is None:
                raise BadRequest(404, "unknown_conversation", "no conversation in this session")
            try:
                hold = await self.http.turns.hold(context.session)
            except TurnInFlightError:
                return _busy()
            try:
                data = await context.session.reload() if hold.shared else context.data
                assert data is not None
                change(data)
                await context.session.save()
            finally:
                await hold.release()
        except BadRequest as error:
            return error.response()
        except TurnInFlightError:
            return _busy()
        except UnknownMessageError as error:
            return error_response(404, "unknown_message_id", str(error))
        except StoreUnavailable as error:
            return store_unavailable(error)
        return JSONResponse({"success": True, **view(data)})

    def _fields(self, body: Mapping[str, Any]) -> tuple[_Set | None, _Set | None]:
        title = system = None
        if "title" in body:
            value = body["title"]
            if value is not None and (
                not isinstance(value, str) or len(value.strip()) > MAX_TITLE_CHARS
            ):
                raise BadRequest(
                    400,
                    "invalid_field",
                    f"'title' must be a string of at most {MAX_TITLE_CHARS} characters, or null",
                )
            title = _Set(value.strip() or None if isinstance(value, str) else None)
        if "system_prompt" in body:
            value = body["system_prompt"]
            limit = self.http.options.max_input_chars
            if value is not None and (not isinstance(value, str) or len(value) > limit):
                raise BadRequest(
                    400,
                    "invalid_field",
                    f"'system_prompt' must be a string of at most {limit} characters, or null",
                )
            system = _Set(value if isinstance(value, str) and value.strip() else None)
        return title, system


class _Set:
    """A field a request sets (to a value or to None), as opposed to one it leaves out."""

    __slots__ = ("value",)

    def __init__(self, value: str | None) -> None:
        self.value = value


def _entry(key: str, conversation: Conversation) -> dict[str, Any]:
    return {
        "id": key,
        "title": conversation.default_title(),
        "messages": len(conversation.messages),
        "system_prompt": conversation.system,
    }


def _busy() -> Response:
    return error_response(
        409, "conversation_busy", "a reply is being generated in this session; stop it first"
    )
