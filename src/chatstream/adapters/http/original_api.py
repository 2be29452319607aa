"""The original ChatStream HTTP API, done right.

Same paths, methods and JSON shapes as the original (``chat_stream``, ``clear_context``,
``get_prompt``, ``set_generation_params``, ``get_generation_params``, ``set_feedback``,
``get_load``, ``get_resource_usage``), plus Server-Sent Events, ``/health`` and
``/metrics``. Each ``handle_*`` coroutine takes a Starlette request and returns an ASGI
response, so hand-written routes can call them as they called the original's.
"""

from __future__ import annotations

import inspect
import json
import math
import urllib.parse
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from chatstream.adapters.service import SHUTDOWN_ERROR, ChatService
from chatstream.adapters.turn import RequestRejected, Turn
from chatstream.core import (
    Admitted,
    ConfigError,
    Conversation,
    Finished,
    FinishReason,
    LocalProtocolError,
    PromptTooLongError,
    Queued,
    QueuePositionChanged,
    RejectReason,
    TextDelta,
    TurnInFlightError,
    UnknownMessageError,
)
from chatstream.core.roles import ClientRoles

from .common import (
    BadRequest,
    HttpOptions,
    RequestContext,
    error_response,
    forbidden,
    read_json_object,
    store_unavailable,
)
from .conversation_routes import conversation_id_of, find_conversation, history_view
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ChatMetrics, RequestTimer
from .resources import resource_usage
from .resumable_routes import ResumableStreams
from .session_stores import SessionData, StoreUnavailable
from .sessions import Session, get_session
from .streaming import EOS, ERROR_MARK, TurnResponse, sse_event
from .turn_guard import TurnGuard, TurnHold

__all__ = ["FinishCallback", "HttpApi", "configure_http", "http_api_of"]

#: ``callback(request, message)``, sync or async, called once when a chat stream ends with
#: "success", "client_disconnected_while_streaming", "client_disconnected_before_streaming"
#: or "error".
FinishCallback = Callable[[Request, str], Any]

# The original's names in set/get_generation_params, and ours.
_PARAM_ALIASES = {"top_k_value": "top_k", "top_p_value": "top_p"}


class HttpApi:
    """The HTTP endpoints of one chat service (a :class:`~chatstream.ChatStream`).

    Get the one of a service with :func:`http_api_of`: every route, app and ``handle_*`` call
    on the same service then shares its metrics, its one-turn-per-session guard and the
    request durations behind ``Retry-After``.
    """

    def __init__(
        self,
        service: ChatService,
        *,
        options: HttpOptions | None = None,
        metrics: ChatMetrics | None = None,
    ) -> None:
        self.service = service
        self.roles: ClientRoles = service.roles
        self.options = options or HttpOptions()
        self.metrics = metrics or ChatMetrics(model_name=lambda: service.model_id)
        self._durations = _RunningMean()
        #: One turn per session at a time (see :mod:`.turn_guard`).
        self.turns = TurnGuard()
        self._streams = ResumableStreams(self.options, service.logger)

    # ------------------------------------------------------------------ chat

    async def handle_chat_stream_request(
        self,
        request: Request,
        request_body: bytes | str | None = None,
        callback: FinishCallback | None = None,
    ) -> Response | TurnResponse:
        """``POST /chat_stream``: one turn of the session's conversation, streamed."""
        cs = self.service
        if not cs.running:
            return _not_running()
        hold: TurnHold | None = None
        try:
            body = await read_json_object(request, request_body, self.options)
            context = await RequestContext.of(request, self.roles, create_session=False)
            if not context.allows("chat_stream"):
                return forbidden(_session_hint(context))
            regenerate = body.get("regenerate", False)
            if not isinstance(regenerate, bool):
                raise BadRequest(400, "invalid_field", "'regenerate' must be true or false")
            user_input = self._user_input(body, regenerate)
            conversation_id = conversation_id_of(body.get("conversation_id"))
            edit_message_id = _edit_message_id(body, regenerate)
            overrides = body.get("generation_params", {})
            if overrides is None:
                overrides = {}
            if not isinstance(overrides, dict):
                raise BadRequest(400, "invalid_field", "'generation_params' must be an object")
            session_params = context.data.generation_params if context.data is not None else {}
            params = {**session_params, **_canonical(overrides)}
            cs.config.generation_params(params)  # refuse bad input before touching the session
            promoted = None if regenerate else self.roles.promotion_for_input(user_input)
            if promoted is not None:
                granted = await context.data_for_writing()
                if granted is None or context.session is None:
                    raise BadRequest(
                        400, "no_session", "a pass phrase works only in a browser session"
                    )
                granted.role = promoted.name
                await context.session.save()
                return self._role_granted(promoted.name, promoted.enable_dev_tool, request, body)
            # A browser without a session yet gets one only once its turn is accepted: a
            # refused request (a 400, a full queue) stores nothing and creates nothing.
            if context.data is None:
                if conversation_id is not None:
                    find_conversation(None, conversation_id)  # a 404: there is no session
                conversation = Conversation()
            else:
                conversation = find_conversation(context.data, conversation_id)
            # One turn per session at a time: in this process, and in every process that
            # shares the store when it has a turn lock.
            if context.session is not None and context.session.id is not None:
                hold = await self.turns.hold(context.session)
                if hold.shared:
                    # Another process may have saved a turn since this request loaded the
                    # session: continue from what the store holds now that no one else may.
                    context.data = await context.session.reload()
                    if context.data is not None:
                        conversation = find_conversation(context.data, conversation_id)
            if context.data is not None:
                conversation_id = conversation_id or context.data.current_id
            timer = RequestTimer(self.metrics)
            timer.submitted()
            started = anyio.current_time()
            turn = await cs.start_turn(
                conversation,
                user_input,
                regenerate=regenerate,
                edit_message_id=edit_message_id,
                generation_params=params,
            )
            current_before = context.data.current_id if context.data is not None else "1"
            if context.data is not None and conversation_id is not None:
                context.data.current_id = conversation_id
                context.data.touch(conversation_id)
            if context.data is None and context.session is not None:
                try:
                    data = await context.data_for_writing()
                except BaseException:
                    turn.close()
                    raise
                assert data is not None
                data.conversation = conversation
                conversation_id = current_before = data.current_id
                try:
                    hold = await self.turns.hold(context.session)
                except BaseException:
                    turn.close()
                    raise
        except BaseException as error:
            if hold is not None:
                await hold.release()
            if isinstance(error, BadRequest):
                return error.response()
            if isinstance(error, TurnInFlightError):
                return error_response(
                    409, "conversation_busy", "a reply is already being generated in this session"
                )
            if isinstance(error, ConfigError | PromptTooLongError | LocalProtocolError):
                return error_response(error.status_hint, _error_code(error), str(error))
            if isinstance(error, RequestRejected):
                return self._rejected(error.reason)
            if isinstance(error, StoreUnavailable):
                return store_unavailable(error)
            raise
        sse = _wants_sse(request, body)
        outcome: dict[str, bool] = {"admitted": isinstance(turn.outcome, Admitted)}

        settled = False

        async def settle() -> None:
            # Save the reply, then free the conversation: as soon as the turn finishes,
            # before its last event goes out, so that a client that sends its next turn at
            # once (to this node or another) finds it saved and the conversation free.
            nonlocal settled
            if settled:
                return
            try:
                if context.session is not None and context.data is not None:
                    assert conversation_id is not None
                    await _save_reply(
                        cs, context.session, context.data, conversation_id, current_before
                    )
            finally:
                # Only once the reply is saved: another process may take the turn next.
                if hold is not None:
                    await hold.release()
            settled = True

        async def on_end(how: str) -> None:
            turn.close()
            finished = turn.finished
            if finished is not None and finished.reason is not FinishReason.CANCELLED:
                message = "error" if finished.reason is FinishReason.ERROR else "success"
            elif outcome["admitted"]:
                message = "client_disconnected_while_streaming"
            else:
                message = "client_disconnected_before_streaming"
            # A turn that ended unheard (the client left) counts its tokens so far too.
            timer.finished(
                finished.reason if finished is not None else FinishReason.CANCELLED, turn.usage
            )
            await settle()
            self._durations.add(anyio.current_time() - started)
            if callback is not None:
                await _call(cs, callback, request, message)

        if not sse:
            return TurnResponse(
                self._original_chunks(turn, timer, outcome, settle),
                media_type="text/plain; charset=utf-8",
                headers={"X-ChatStream-Last-Generated-Message-Id": turn.reply.id},
                on_end=on_end,
                feeders=[hold.keep] if hold is not None and hold.shared else (),
            )

        async def cancelled() -> dict[str, Any]:
            turn.close()
            await settle()  # saved before the client hears of it
            return _done(turn.reply.id, FinishReason.CANCELLED, turn, timer)

        # Server-Sent Events are resumable: the turn writes them to a journal that this
        # response, and any request that resumes the stream, reads.
        return self._streams.respond(
            turn.reply.id,
            context,
            self._sse_events(turn, timer, outcome, settle),
            cancelled,
            on_end=on_end,
            feeders=[hold.keep] if hold is not None and hold.shared else (),
        )

    async def handle_chat_stream_resume_request(self, request: Request) -> Response:
        """``GET /chat_stream``: resume a turn's Server-Sent Events
        (:meth:`.ResumableStreams.resume`)."""
        context = await RequestContext.of(request, self.roles, create_session=False)
        if not context.allows("chat_stream"):
            return forbidden(_session_hint(context))
        return await self._streams.resume(request, context)

    async def handle_chat_stream_stop_request(self, request: Request) -> Response:
        """``POST /chat_stream/stop``: stop a running turn of this session
        (:meth:`.ResumableStreams.stop`)."""
        try:
            body = await read_json_object(request, None, self.options)
        except BadRequest as error:
            return error.response()
        context = await RequestContext.of(request, self.roles, create_session=False)
        if not context.allows("chat_stream"):
            return forbidden(_session_hint(context))
        return self._streams.stop(body, context)

    def _user_input(self, body: Mapping[str, Any], regenerate: bool) -> str | None:
        user_input = body.get("user_input")
        if regenerate:
            return None
        if not isinstance(user_input, str):
            raise BadRequest(
                400,
                "missing_user_input",
                "'user_input' is required and must be a string (unless regenerating)",
            )
        if not user_input.strip():
            raise BadRequest(400, "empty_user_input", "'user_input' is empty")
        if len(user_input) > self.options.max_input_chars:
            raise BadRequest(
                400,
                "user_input_too_long",
                f"'user_input' is longer than {self.options.max_input_chars} characters",
            )
        return user_input

    async def _events(
        self,
        turn: Turn,
        timer: RequestTimer,
        outcome: dict[str, bool],
        settle: Callable[[], Awaitable[None]],
        keepalive: float | None,
    ) -> Any:
        """Turn events, with None for each ``keepalive`` interval without one; ``settle`` is
        awaited once the turn has finished, before its ``Finished`` is yielded."""
        while turn.finished is None:
            event = await turn.next_event(keepalive)
            if event is None and turn.finished is None:
                if keepalive is None:
                    return  # closed: no Finished will come
                yield None
                continue
            if isinstance(event, Admitted):
                outcome["admitted"] = True
                timer.admitted()
            elif isinstance(event, TextDelta):
                timer.delta()
            elif isinstance(event, Finished):
                # Shielded: once the reply is whole, it is saved (and its lock freed after
                # that) whatever happens to this request meanwhile.
                with anyio.CancelScope(shield=True):
                    await settle()
            yield event

    async def _sse_events(
        self,
        turn: Turn,
        timer: RequestTimer,
        outcome: dict[str, bool],
        settle: Callable[[], Awaitable[None]],
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The turn's Server-Sent Events, as (event, data)."""
        message_id = turn.reply.id
        async for event in self._events(turn, timer, outcome, settle, keepalive=None):
            match event:
                case Queued(position=position) | QueuePositionChanged(position=position):
                    yield "queued", {"position": position}
                case Admitted():
                    yield "started", {"message_id": message_id}
                case TextDelta(text=text):
                    yield "delta", {"text": text}
                case Finished(reason=FinishReason.ERROR, error=error):
                    reason = "shutdown" if error == SHUTDOWN_ERROR else "error"
                    yield "error", {"message": error or "generation failed", "reason": reason}
                case Finished(reason=reason):
                    yield "done", _done(message_id, reason, turn, timer)

    async def _original_chunks(
        self,
        turn: Turn,
        timer: RequestTimer,
        outcome: dict[str, bool],
        settle: Callable[[], Awaitable[None]],
    ) -> Any:
        # Every chunk is the whole reply so far followed by <::EOS::>, as the original sent.
        text = ""
        events = self._events(turn, timer, outcome, settle, self.options.keepalive_sec)
        async for event in events:
            if isinstance(event, TextDelta):
                text += event.text
                yield (text + EOS).encode()
            elif isinstance(event, Finished) and event.reason is FinishReason.ERROR:
                yield f"{ERROR_MARK}{event.error or 'generation failed'}{EOS}".encode()
            elif isinstance(event, Finished) and not text:
                # An empty reply (a stop string at its very start) still ends with the mark,
                # so that the client knows it is whole.
                yield EOS.encode()

    def _role_granted(
        self, role: str, dev_tool: bool, request: Request, body: Mapping[str, Any]
    ) -> Response:
        text = f"New role: '{role}' has been granted"
        headers = {"X-ChatStream-API-DevTool-Enabled": "enabled"} if dev_tool else {}
        if _wants_sse(request, body):
            events = sse_event("role", {"role": role, "dev_tool": dev_tool}) + sse_event(
                "done", {"message_id": None, "finish_reason": "role_granted"}
            )
            return Response(events, media_type="text/event-stream", headers=headers)
        return PlainTextResponse(text + EOS, headers=headers)

    def _rejected(self, reason: RejectReason) -> Response:
        self.metrics.observe_rejected(str(reason))
        if reason is RejectReason.QUEUE_FULL:
            headers = {"Retry-After": str(self._retry_after())}
            status = 429 if self.service.config.too_many_request_as_http_error else 200
            # The original's body: {"error": "too_many_requests"}.
            return JSONResponse({"error": "too_many_requests"}, status_code=status, headers=headers)
        if reason is RejectReason.PROMPT_TOO_LONG:
            return error_response(400, "prompt_too_long", "the prompt does not fit the context")
        return error_response(
            503, str(reason), "the server is not taking new requests", {"Retry-After": "5"}
        )

    def _retry_after(self) -> int:
        # Honest backpressure: roughly when a place should free, from recent durations.
        stats = self.service.statistics()
        mean = self._durations.mean
        if mean is None:
            return 1
        return max(1, math.ceil(mean * (stats.waiting + 1) / max(stats.capacity, 1)))

    # ------------------------------------------------------------------ the rest

    async def handle_clear_context_request(self, request: Request) -> Response:
        context = await RequestContext.of(request, self.roles, create_session=False)
        if not context.allows("clear_context"):
            return forbidden(_session_hint(context))
        if context.data is None or context.session is None:
            return JSONResponse({"success": False, "message": "no context."})
        try:
            # The original sent no body (that is {}); a body may name the conversation.
            body = await read_json_object(request, None, self.options)
            conversation_id = conversation_id_of(body.get("conversation_id"))
            find_conversation(context.data, conversation_id)
        except BadRequest as error:
            return error.response()
        try:
            # Held while clearing, so that a turn running here or on another node cannot
            # save its reply over the cleared history.
            hold = await self.turns.hold(context.session)
        except TurnInFlightError:
            return _busy_clearing()
        try:
            data = await context.session.reload() if hold.shared else context.data
            assert data is not None
            try:
                find_conversation(data, conversation_id).clear()
            except BadRequest as error:
                return error.response()
            except TurnInFlightError:
                return _busy_clearing()
            await context.session.save()
        finally:
            await hold.release()
        return JSONResponse({"success": True, "message": "Context successfully cleared"})

    async def handle_get_prompt_request(self, request: Request) -> Response:
        context = await RequestContext.of(request, self.roles, create_session=False)
        if not context.allows("get_prompt"):
            return forbidden(_session_hint(context))
        if context.data is None:
            return JSONResponse({"success": False, "message": "no context."})
        try:
            conversation = find_conversation(
                context.data, conversation_id_of(request.query_params.get("conversation_id"))
            )
        except BadRequest as error:
            return error.response()
        prompt = await anyio.to_thread.run_sync(self.service.render_history, conversation)
        if prompt is None:
            return JSONResponse(
                {"success": True, "message": "no prompt", "prompt": None, "prompt_text": None}
            )
        return JSONResponse(
            {
                "success": True,
                "message": "success",
                # The original percent-encoded the prompt; prompt_text is the plain text.
                "prompt": urllib.parse.quote(prompt),
                "prompt_text": prompt,
            }
        )

    async def handle_get_history_request(self, request: Request) -> Response:
        """``GET /get_history``: the session's messages, for a page that reloads."""
        context = await RequestContext.of(request, self.roles, create_session=False)
        if not context.allows("get_history"):
            return forbidden(_session_hint(context))
        try:
            conversation_id = conversation_id_of(request.query_params.get("conversation_id"))
            if context.data is None and conversation_id is None:
                history: dict[str, Any] = {"conversation_id": None, "messages": []}
            else:
                history = history_view(context.data, conversation_id)
        except BadRequest as error:
            return error.response()
        return JSONResponse({"success": True, "message": "success", **history})

    async def handle_set_generation_params_request(self, request: Request) -> Response:
        try:
            body = await read_json_object(request, None, self.options)
        except BadRequest as error:
            return error.response()
        context = await RequestContext.of(request, self.roles, create_session=False)
        if not context.allows("set_generation_params"):
            return forbidden(_session_hint(context))
        if context.session is None:
            return JSONResponse({"success": False, "message": "no session"})
        earlier = context.data.generation_params if context.data is not None else {}
        try:
            merged = {**earlier, **_canonical(body)}
            self.service.config.generation_params(merged)
        except ConfigError as error:
            return error_response(400, "invalid_generation_params", str(error))
        # Valid: only now is a session created, if there is none yet.
        data = await context.data_for_writing()
        assert data is not None
        # Incremental: what is not in this request keeps its earlier value.
        data.generation_params = merged
        await context.session.save()
        return JSONResponse(
            {
                "success": True,
                "message": "success",
                "generation_params": self._params_view(merged),
            }
        )

    async def handle_get_generation_params_request(self, request: Request) -> Response:
        context = await RequestContext.of(request, self.roles, create_session=False)
        if not context.allows("get_generation_params"):
            return forbidden(_session_hint(context))
        overrides = context.data.generation_params if context.data is not None else {}
        return JSONResponse(
            {
                "success": True,
                "message": "success",
                "generation_params": self._params_view(overrides),
            }
        )

    def _params_view(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        params = self.service.config.generation_params(overrides)
        return {
            "temperature": params.temperature,
            "top_k_value": params.top_k,
            "top_p_value": params.top_p,
            "max_new_tokens": params.max_new_tokens,
            "repetition_penalty": params.repetition_penalty,
            "repetition_penalty_method": params.repetition_penalty_method,
            "seed": params.seed,
        }

    async def handle_set_feedback_request(
        self, request: Request, opts: Mapping[str, Any] | None = None
    ) -> Response:
        try:
            body = await read_json_object(request, None, self.options)
        except BadRequest as error:
            return error.response()
        context = await RequestContext.of(request, self.roles, create_session=False)
        if not context.allows("set_feedback"):
            return forbidden(_session_hint(context))
        message_id = body.get("message_id")
        is_like = body.get("is_like", False)
        if not isinstance(message_id, str) or not message_id:
            return error_response(400, "missing_message_id", "'message_id' must be a string")
        if not isinstance(is_like, bool):
            return error_response(400, "invalid_field", "'is_like' must be true or false")
        form_data = body.get("form_data", "")
        size = len(json.dumps(form_data, ensure_ascii=False).encode())
        if size > self.options.max_feedback_bytes:
            return error_response(
                400,
                "feedback_too_large",
                f"'form_data' takes {size} bytes as JSON; at most "
                f"{self.options.max_feedback_bytes} are kept",
            )
        if context.data is None or context.session is None:
            return error_response(404, "unknown_message_id", "no conversation in this session")
        try:
            conversation = find_conversation(
                context.data, conversation_id_of(body.get("conversation_id"))
            )
        except BadRequest as error:
            return error.response()
        try:
            message = conversation.set_feedback(message_id, is_like=is_like, data=form_data)
        except UnknownMessageError:
            return error_response(404, "unknown_message_id", f"no message {message_id!r}")
        # Before the save, whose trimming to the session's limits may drop the exchange.
        history = conversation.history_until(message_id)
        await context.session.save()
        handler = (opts or {}).get("on_feedback_received")
        if handler is not None:
            await _call(
                self.service,
                handler,
                {
                    "is_like": is_like,
                    "form_data": form_data,
                    "prompt": [m.to_json() for m in history],
                    "target_message_id": message_id,
                    "target_message": message.content,
                    "generation_params": self._params_view(context.data.generation_params),
                },
            )
        return JSONResponse({"success": True, "message": "success"})

    async def handle_get_load_request(self, request: Request) -> Response:
        context = await RequestContext.of(request, self.roles, create_session=False)
        if not context.allows("get_load"):
            return forbidden(_session_hint(context))
        stats = self.service.statistics()
        worker = {
            "name": self.service.name,
            "processing": stats.running,
            "waiting": stats.waiting,
            # Kept for clients of the original; its two internal queues are one queue here.
            "_num_of_next_queue": 0,
            "_num_of_request_queue": stats.waiting,
            "max_processing": stats.capacity,
            # The real waiting room (the original reported capacity + queue size here).
            "max_waiting": stats.max_waiting,
        }
        return JSONResponse({"success": True, "message": "success", "chatstream_workers": [worker]})

    async def handle_get_resource_usage_request(self, request: Request) -> Response:
        context = await RequestContext.of(request, self.roles, create_session=False)
        if not context.allows("get_resource_usage"):
            return forbidden(_session_hint(context))
        usage = await anyio.to_thread.run_sync(
            resource_usage, self.service.name, self.service.num_gpus
        )
        return JSONResponse({"success": True, "message": "success", "memory_usage": [usage]})

    async def handle_load_request(self, request: Request) -> Response:
        """``GET /load``: what a balancer needs to pick a node, cheaply and for everyone (as
        ``/health``: no role, no session, no store), always 200 while the process answers.

        ``accepting`` is false while loading, draining or with the model gone: a new turn
        would get a 503 here. A full node still accepts (a new turn gets a 429 only when
        ``waiting`` reaches ``max_waiting``)."""
        cs = self.service
        stats = cs.statistics()
        accepting = cs.running and stats.lost is None and not (stats.draining or cs.draining)
        return JSONResponse(
            {
                "accepting": accepting,
                "free_slots": max(stats.capacity - stats.running, 0),
                "running": stats.running,
                "capacity": stats.capacity,
                "waiting": stats.waiting,
                "max_waiting": stats.max_waiting,
            }
        )

    async def handle_health_request(self, request: Request) -> Response:
        """``GET /health``: 200 when serving, 503 while loading, draining, degraded (the
        model failed every recent request, or the session store is unreachable) or gone."""
        cs = self.service
        if not cs.running:
            return JSONResponse({"status": "loading"}, status_code=503)
        stats = cs.statistics()
        if stats.lost is not None:
            return JSONResponse({"status": "unavailable", "detail": stats.lost}, status_code=503)
        if stats.draining or cs.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if stats.consecutive_failures >= self.options.degraded_after_failures:
            # The model fails whatever it is given (NaN weights, a broken device): a
            # balancer should send the traffic elsewhere until a request succeeds again.
            return JSONResponse(
                {
                    "status": "degraded",
                    "detail": f"the last {stats.consecutive_failures} requests failed in the model",
                },
                status_code=503,
            )
        if not await _store_reachable(request):
            # Every request with a session would get a 503: a balancer should know.
            return JSONResponse(
                {"status": "degraded", "detail": "the session store cannot be reached"},
                status_code=503,
            )
        return JSONResponse(
            {
                "status": "ok",
                "running": stats.running,
                "waiting": stats.waiting,
                "capacity": stats.capacity,
                "max_waiting": stats.max_waiting,
            }
        )

    async def handle_metrics_request(self, request: Request) -> Response:
        """``GET /metrics`` for callers whose role allows ``metrics``."""
        context = await RequestContext.of(request, self.roles, create_session=False)
        if not context.allows("metrics"):
            return forbidden(_session_hint(context))
        return await self.render_metrics(request)

    async def render_metrics(self, request: Request) -> Response:
        """``GET /metrics`` without a role check (an app that opens it, or guards it with a
        token of its own)."""
        text = self.metrics.render(self.service.statistics())
        return PlainTextResponse(text, media_type=METRICS_CONTENT_TYPE)


# One HttpApi per service, for as long as the service lives (weakly keyed: the HTTP side
# never keeps a service alive, and the service needs no HTTP attribute of its own).
_APIS: weakref.WeakKeyDictionary[ChatService, HttpApi] = weakref.WeakKeyDictionary()


def http_api_of(service: ChatService) -> HttpApi:
    """The HTTP endpoints of ``service``, made on first use (with default options)."""
    api = _APIS.get(service)
    if api is None:
        api = _APIS[service] = HttpApi(service)
    return api


def configure_http(service: ChatService, options: HttpOptions | None) -> HttpApi:
    """Give ``service`` new HTTP endpoints with these limits (body size, input length,
    keep-alive, drain timeout); routes made before keep the old ones."""
    api = _APIS[service] = HttpApi(service, options=options)
    return api


#: How long a finished turn tries to save its reply while the store is unreachable (a Redis
#: restart), holding its conversation's lock so that no later turn overtakes it.
SAVE_RETRY_SEC = 10.0


async def _save_reply(
    cs: ChatService,
    session: Session,
    data: SessionData,
    conversation_id: str,
    current_before: str,
) -> None:
    deadline = anyio.current_time() + SAVE_RETRY_SEC
    while True:
        try:
            if session.id is not None:
                # Other requests may have saved feedback, parameters, a role, titles or other
                # conversations since this turn loaded the session (a store that keeps
                # copies): the turn owns only its conversation's messages.
                latest = await session.store.load(session.id)
                if latest is not None and latest is not data:
                    data.merge_turn(latest, conversation_id, current_before)
            # The most recently used, as the turn made it when it began.
            if conversation_id in data.conversations:
                data.touch(conversation_id)
            await session.save()
            return
        except StoreUnavailable as error:
            if anyio.current_time() >= deadline:
                # The history before this turn is untouched; the next starts from there.
                cs.logger.warning("a reply could not be saved: %s", error)
                return
        await anyio.sleep(0.5)


def _done(message_id: str, reason: FinishReason, turn: Turn, timer: RequestTimer) -> dict[str, Any]:
    """The data of the ``done`` event."""
    usage = turn.usage
    return {
        "message_id": message_id,
        "finish_reason": str(reason),
        "usage": None
        if usage is None
        else {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "cached_tokens": usage.cached_tokens,
        },
        "timings": timer.timings(usage.completion_tokens if usage is not None else 0),
    }


class _RunningMean:
    """Mean of the last stretch of request durations (an exponential moving average)."""

    def __init__(self, weight: float = 0.1) -> None:
        self.mean: float | None = None
        self._weight = weight

    def add(self, value: float) -> None:
        self.mean = value if self.mean is None else self.mean + self._weight * (value - self.mean)


async def _store_reachable(request: Request) -> bool:
    """Whether the request's session store answers (stores of one process always do; a
    shared one says through its ``ping``)."""
    try:
        store = get_session(request).store
    except RuntimeError:
        return True  # no session middleware
    ping = getattr(store, "ping", None)
    return True if ping is None else bool(await ping())


def _busy_clearing() -> Response:
    return error_response(409, "conversation_busy", "a reply is being generated; stop it first")


def _not_running() -> Response:
    return error_response(
        503, "unavailable", "the model is not loaded (yet, or any more)", {"Retry-After": "5"}
    )


#: Generation options only the OpenAI-compatible API can carry (its answers have room for
#: log-probabilities; a grammar is built from its ``response_format``).
_OPENAI_ONLY = ("logprobs", "grammar")


def _canonical(params: Mapping[str, Any]) -> dict[str, Any]:
    """Our names for the original's, refusing the options this API cannot honour.

    Raises:
        ConfigError: ``logprobs`` or ``grammar``.
    """
    for name in _OPENAI_ONLY:
        if name in params:
            raise ConfigError(name, "only the OpenAI-compatible API (/v1/...) takes it")
    return {_PARAM_ALIASES.get(str(k), str(k)): v for k, v in params.items()}


def _wants_sse(request: Request, body: Mapping[str, Any]) -> bool:
    if "text/event-stream" in request.headers.get("accept", ""):
        return True
    return request.query_params.get("stream") == "sse" or body.get("stream") == "sse"


def _edit_message_id(body: Mapping[str, Any], regenerate: bool) -> str | None:
    value = body.get("edit_message_id")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(400, "invalid_field", "'edit_message_id' must be a message id")
    if regenerate:
        raise BadRequest(
            400, "invalid_field", "'edit_message_id' and 'regenerate' cannot go together"
        )
    return value


def _error_code(error: Exception) -> str:
    if isinstance(error, UnknownMessageError):
        return "unknown_message_id"
    if isinstance(error, PromptTooLongError):
        return "prompt_too_long"
    if isinstance(error, ConfigError):
        return "invalid_generation_params"
    return "bad_request"


def _session_hint(context: RequestContext) -> str | None:
    if context.session is None and context.role is None:
        return "no session: add chat_stream.append_middlewares(app) or use create_app()"
    return None


async def _call(cs: ChatService, function: Callable[..., Any], *args: Any) -> None:
    """Run a user callback (sync or async) and log what it raises instead of breaking the
    stream: a failing callback must never leave a slot held or a response hanging."""
    try:
        result = function(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        cs.logger.exception("a chatstream callback raised")
