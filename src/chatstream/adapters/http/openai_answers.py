"""The answers of the OpenAI-compatible routes, once their requests are in: the events of
the ``n`` requests of one body merged into one stream, each choice read as it comes (text,
log-probabilities, a tool call), and the whole answer or its Server-Sent Events built from the
pydantic models of :mod:`.openai_responses`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chatstream.adapters.driver import RequestEvent, RequestHandle
from chatstream.adapters.service import SHUTDOWN_ERROR, ChatService
from chatstream.core import Finished, FinishReason, TextDelta, TokenLogprob

from .metrics import RequestTimer
from .openai_models import openai_error
from .openai_responses import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatLogprobs,
    ChatMessage,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionChunk,
    FunctionCall,
    LegacyLogprobs,
    TokenLogprobEntry,
    ToolCall,
    TopLogprob,
    Usage,
    UsageDetails,
    sse,
)
from .openai_tools import ToolCallStream, call_id, parse_tool_call

__all__ = ["Answer", "Plan", "Route", "ToolMode", "WholeResponse", "closer", "merged"]

Route = Literal["chat", "completion"]
#: How a choice reads its reply: plain text, a call the grammar forces, or text that may be
#: a call (``tool_choice: "auto"``).
ToolMode = Literal["none", "forced", "auto"]
FinishName = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True, slots=True)
class Plan:
    """What one request asks for, once validated: the submissions and how to answer."""

    route: Route
    prompts: list[Callable[[Mapping[str, object]], Awaitable[RequestHandle]]]
    params: dict[str, object]
    n: int
    stream: bool
    include_usage: bool
    tool_mode: ToolMode = "none"
    tool_names: tuple[str, ...] = ()
    echo: list[str] = field(default_factory=list)
    #: The client's name of each generation option, where it differs (for errors).
    names: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------- events of n requests


class Merged:
    """The events of several requests as ``(index, event)``, in arrival order. With one
    request it reads its handle directly; with more, one feeder task per request (started by
    the response, in its task group) forwards into a shared stream."""

    def __init__(self, handles: Sequence[_Timed]) -> None:
        self.handles = handles
        self.feeders: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._send: ObjectSendStream[tuple[int, RequestEvent]] | None = None
        self._receive: ObjectReceiveStream[tuple[int, RequestEvent]] | None = None
        if len(handles) > 1:
            self._send, self._receive = anyio.create_memory_object_stream[tuple[int, RequestEvent]](
                max_buffer_size=64 * len(handles)
            )
            self._open = len(handles)
            self.feeders = [self._feeder(index) for index in range(len(handles))]

    def _feeder(self, index: int) -> Callable[[], Coroutine[Any, Any, None]]:
        async def feed() -> None:
            assert self._send is not None
            try:
                async for event in self.handles[index]:
                    await self._send.send((index, event))
            finally:
                self._open -= 1
                if not self._open:
                    await self._send.aclose()

        return feed

    def __aiter__(self) -> Merged:
        return self

    async def __anext__(self) -> tuple[int, RequestEvent]:
        if self._receive is None:
            return 0, await self.handles[0].__anext__()
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def run_feeders(self) -> None:
        """For an answer that is not streamed: run the feeders here."""
        async with anyio.create_task_group() as tg:
            for feed in self.feeders:
                tg.start_soon(feed)


def merged(handles: Sequence[RequestHandle], timers: Sequence[RequestTimer]) -> Merged:
    return Merged([_Timed(h, t) for h, t in zip(handles, timers, strict=True)])


class _Timed:
    """A request's events, feeding the metrics on the way."""

    def __init__(self, handle: RequestHandle, timer: RequestTimer) -> None:
        self.handle = handle
        self.timer = timer

    def __aiter__(self) -> _Timed:
        return self

    async def __anext__(self) -> RequestEvent:
        event = await self.handle.__anext__()
        self.timer.observe(event)
        return event


# ---------------------------------------------------------------------- one choice


class _Choice:
    """One choice of a reply: its text, log-probabilities and tool call as they come."""

    def __init__(self, index: int, answer: Answer) -> None:
        self.index = index
        self.answer = answer
        self.text: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.finished: Finished | None = None
        self.mode = answer.plan.tool_mode
        self.call = ToolCallStream()
        self.call_id = call_id()
        self.held = ""  # auto mode: text that may still be a call
        self.tool_call: tuple[str, str] | None = None
        # Forced mode: what was streamed of the call so far.
        self.call_name: str | None = None
        self.call_arguments = ""

    # Streamed deltas -------------------------------------------------------

    def on_text(self, event: TextDelta) -> list[dict[str, Any]]:
        """The deltas (chat) or text pieces (completions) to send for new text."""
        self.text.append(event.text)
        self.logprobs += event.logprobs
        if self.answer.plan.route == "completion":
            offset = sum(len(t) for t in self.text[:-1])
            return [{"text": event.text, "logprobs": self._legacy_logprobs(event.logprobs, offset)}]
        if self.mode == "forced":
            return self._call_deltas(event.text)
        if self.mode == "auto" and self._may_be_call(self.held + event.text):
            self.held += event.text
            return []
        text, self.held = self.held + event.text, ""
        self.mode = "none"
        return [{"content": text, "logprobs": self._logprobs(event.logprobs)}]

    def on_finish(self, finished: Finished) -> list[dict[str, Any]]:
        self.finished = finished
        if self.answer.plan.route == "completion" or finished.reason not in (
            FinishReason.STOP,
            FinishReason.LENGTH,
        ):
            return []
        if self.mode == "forced":
            self.tool_call = (self.call_name or "", self.call_arguments + self.call.finish())
            rest = self.tool_call[1][len(self.call_arguments) :]
            return [self._call_delta(arguments=rest)] if rest else []
        if self.mode == "auto":
            parsed = parse_tool_call(self.held, self.answer.plan.tool_names)
            if parsed is not None:
                self.tool_call = (parsed.name, parsed.arguments)
                return [self._call_delta(name=parsed.name, arguments=parsed.arguments)]
            if self.held:
                return [{"content": self.held}]
        return []

    def _call_deltas(self, text: str) -> list[dict[str, Any]]:
        name, arguments = self.call.feed(text)
        deltas = []
        if name is not None:
            self.call_name = name
            deltas.append(self._call_delta(name=name, arguments=""))
        if arguments:
            self.call_arguments += arguments
            deltas.append(self._call_delta(arguments=arguments))
        return deltas

    def _call_delta(self, *, name: str | None = None, arguments: str) -> dict[str, Any]:
        function: dict[str, Any] = {"arguments": arguments}
        call: dict[str, Any] = {"index": 0, "function": function}
        if name is not None:
            function["name"] = name
            call.update(id=self.call_id, type="function")
        return {"tool_calls": [call]}

    @staticmethod
    def _may_be_call(text: str) -> bool:
        head = text.lstrip()
        return not head or head.startswith(("{", "<tool_call>")) or "<tool_call>".startswith(head)

    # Whole answers --------------------------------------------------------

    def finish_reason(self) -> FinishName:
        finished = self.finished
        if finished is not None and finished.reason is FinishReason.LENGTH:
            return "length"
        return "tool_calls" if self.tool_call is not None else "stop"

    def message(self) -> ChatMessage:
        text = "".join(self.text)
        if self.mode == "forced":
            parsed = parse_tool_call(text, self.answer.plan.tool_names)
            if parsed is not None:
                self.tool_call = (parsed.name, parsed.arguments)
            elif self.tool_call is None:  # cut by the length limit: what there is of it
                self.tool_call = (self.call_name or "", self.call_arguments + self.call.finish())
        elif self.mode == "auto":
            parsed = parse_tool_call(text, self.answer.plan.tool_names)
            self.tool_call = None if parsed is None else (parsed.name, parsed.arguments)
        if self.tool_call is not None:
            name, arguments = self.tool_call
            call = ToolCall(id=self.call_id, function=FunctionCall(name=name, arguments=arguments))
            return ChatMessage(content=None, tool_calls=[call])
        return ChatMessage(content=text)

    # Log-probabilities ----------------------------------------------------

    def _logprobs(self, logprobs: Sequence[TokenLogprob]) -> ChatLogprobs | None:
        if self.answer.plan.params.get("logprobs") is None:
            return None
        piece = self.answer.token_piece
        return ChatLogprobs(
            content=[
                TokenLogprobEntry(
                    **_top(piece(lp.token_id), lp.logprob).model_dump(),
                    top_logprobs=[_top(piece(t), v) for t, v in lp.top],
                )
                for lp in logprobs
            ]
        )

    def _legacy_logprobs(
        self, logprobs: Sequence[TokenLogprob], offset: int
    ) -> LegacyLogprobs | None:
        """The completions route's shape; ``offset``: where the first token's text starts in
        the reply."""
        if self.answer.plan.params.get("logprobs") is None:
            return None

        def text(token_id: int) -> str:
            return self.answer.token_piece(token_id)[0]

        tokens, offsets = [], []
        for lp in logprobs:
            tokens.append(text(lp.token_id))
            offsets.append(offset)
            offset += len(tokens[-1])
        return LegacyLogprobs(
            tokens=tokens,
            token_logprobs=[lp.logprob for lp in logprobs],
            top_logprobs=[{text(t): v for t, v in lp.top} for lp in logprobs],
            text_offset=offsets,
        )


def _top(piece: tuple[str, bytes], logprob: float) -> TopLogprob:
    text, exact = piece
    return TopLogprob(token=text, logprob=logprob, bytes=list(exact))


# ---------------------------------------------------------------------- the answer


class Answer:
    """The response to one request: its choices, streamed or whole."""

    def __init__(
        self,
        service: ChatService,
        plan: Plan,
        choices: int,
    ) -> None:
        self.plan = plan
        self.service = service
        self.model = self.service.model_id
        self.created = int(time.time())
        prefix = "chatcmpl" if plan.route == "chat" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.choices = [_Choice(index, self) for index in range(choices)]
        self._pieces: dict[int, tuple[str, bytes]] = {}

    def token_piece(self, token_id: int) -> tuple[str, bytes]:
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self.service.token_piece(token_id)
        return piece

    def _usage(self) -> Usage:
        usages = [c.finished.usage for c in self.choices if c.finished is not None]
        # The prompt once per prompt, as OpenAI counts it; every choice's reply.
        per_prompt = usages[:: self.plan.n]
        prompt = sum(u.prompt_tokens for u in per_prompt)
        completion = sum(u.completion_tokens for u in usages)
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            # Prompt tokens whose KV was already held (prefix reuse), as OpenAI reports them.
            prompt_tokens_details=UsageDetails(
                cached_tokens=sum(u.cached_tokens for u in per_prompt)
            ),
        )

    def _chunk_of(
        self,
        chat: list[ChunkChoice] | None = None,
        text: list[CompletionChoice] | None = None,
        usage: Usage | None = None,
    ) -> bytes:
        if self.plan.route == "chat":
            return sse(
                ChatCompletionChunk(
                    id=self.id,
                    created=self.created,
                    model=self.model,
                    choices=chat or [],
                    usage=usage,
                )
            )
        return sse(
            CompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=text or [], usage=usage
            )
        )

    # Streamed --------------------------------------------------------------

    async def chunks(self, events: Merged) -> AsyncIterator[bytes]:
        chat = self.plan.route == "chat"
        if chat:
            for choice in self.choices:
                yield self._chunk(choice, {"role": "assistant", "content": ""}, None)
        elif self.plan.echo:
            for choice in self.choices:
                text = self.plan.echo[choice.index // self.plan.n]
                yield self._chunk(choice, {"text": text, "logprobs": None}, None)
        failure: str | None = None
        async for index, event in events:
            choice = self.choices[index]
            if isinstance(event, TextDelta):
                for delta in choice.on_text(event):
                    yield self._chunk(choice, delta, None)
            elif isinstance(event, Finished):
                if event.reason is FinishReason.ERROR or event.error == SHUTDOWN_ERROR:
                    failure = event.error
                    yield _sse({"error": _stream_error(event)})
                    continue
                for delta in choice.on_finish(event):
                    yield self._chunk(choice, delta, None)
                if event.reason is not FinishReason.CANCELLED:
                    yield self._chunk(choice, {} if chat else {"text": ""}, choice.finish_reason())
        if self.plan.include_usage and failure is None:
            yield self._chunk_of(usage=self._usage())
        yield b"data: [DONE]\n\n"

    def _chunk(self, choice: _Choice, delta: dict[str, Any], finish: FinishName | None) -> bytes:
        logprobs = delta.pop("logprobs", None)
        if self.plan.route == "chat":
            entry = ChunkChoice(
                index=choice.index, delta=delta, logprobs=logprobs, finish_reason=finish
            )
            return self._chunk_of(chat=[entry])
        piece = CompletionChoice(
            index=choice.index,
            text=str(delta.get("text", "")),
            logprobs=logprobs,
            finish_reason=None if finish is None else _text_finish(finish),
        )
        return self._chunk_of(text=[piece])

    # Whole -----------------------------------------------------------------

    async def whole(self, events: Merged) -> Response:
        async with anyio.create_task_group() as tg:
            tg.start_soon(events.run_feeders)
            async for index, event in events:
                choice = self.choices[index]
                if isinstance(event, TextDelta):
                    choice.on_text(event)
                elif isinstance(event, Finished):
                    choice.finished = event
        for choice in self.choices:
            finished = choice.finished
            if finished is not None and finished.error == SHUTDOWN_ERROR:
                response = openai_error(503, SHUTDOWN_ERROR, "server_error", code="shutdown")
                response.headers["Retry-After"] = "5"
                return response
            if finished is None or finished.reason is FinishReason.ERROR:
                detail = finished.error if finished is not None else "the request was cancelled"
                return openai_error(500, f"generation failed: {detail}", "server_error")
        answer: ChatCompletion | Completion
        if self.plan.route == "chat":
            answer = ChatCompletion(
                id=self.id,
                created=self.created,
                model=self.model,
                choices=[self._chat_choice(c) for c in self.choices],
                usage=self._usage(),
            )
        else:
            answer = Completion(
                id=self.id,
                created=self.created,
                model=self.model,
                choices=[self._completion_choice(c) for c in self.choices],
                usage=self._usage(),
            )
        return Response(answer.model_dump_json(), media_type="application/json")

    def _completion_choice(self, choice: _Choice) -> CompletionChoice:
        echo = self.plan.echo[choice.index // self.plan.n] if self.plan.echo else ""
        return CompletionChoice(
            index=choice.index,
            text=echo + "".join(choice.text),
            logprobs=choice._legacy_logprobs(choice.logprobs, 0),
            finish_reason=_text_finish(choice.finish_reason()),
        )

    def _chat_choice(self, choice: _Choice) -> ChatChoice:
        message = choice.message()
        logprobs = None if message.tool_calls else choice._logprobs(choice.logprobs)
        return ChatChoice(
            index=choice.index,
            message=message,
            logprobs=logprobs,
            finish_reason=choice.finish_reason(),
        )


def _text_finish(finish: FinishName) -> Literal["stop", "length"]:
    """A text completion has no tool calls."""
    return "length" if finish == "length" else "stop"


def _stream_error(event: Finished) -> dict[str, Any]:
    if event.error == SHUTDOWN_ERROR:
        return {"message": SHUTDOWN_ERROR, "type": "server_error", "code": "shutdown"}
    return {"message": f"generation failed: {event.error}", "type": "server_error"}


def _sse(payload: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


class WholeResponse(Response):
    """A non-streamed completion that still notices the client leaving: the generations are
    cancelled and their slots freed, rather than finished for nobody."""

    def __init__(
        self,
        answer: Awaitable[Response],
        handles: Sequence[RequestHandle],
        timers: Sequence[RequestTimer],
    ) -> None:
        self.answer = answer
        self.handles = handles
        self.timers = timers
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response: Response | None = None
        try:
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                response = await self.answer
                tg.cancel_scope.cancel()
        finally:
            for handle, timer in zip(self.handles, self.timers, strict=True):
                handle.close()
                # Ignored when the request already finished; else its tokens so far count.
                timer.finished(FinishReason.CANCELLED, handle.usage)
        if response is not None:
            await response(scope, receive, send)


def closer(handles: Sequence[RequestHandle], timers: Sequence[RequestTimer]) -> Any:
    async def close(how: str) -> None:
        for handle, timer in zip(handles, timers, strict=True):
            handle.close()
            # Ignored when the request already finished; else its tokens so far count.
            timer.finished(FinishReason.CANCELLED, handle.usage)

    return close
