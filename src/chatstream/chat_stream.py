"""``ChatStream``: the original's constructor and methods, built on the core and adapters.

    chat_stream = ChatStream(model=model, tokenizer=tokenizer, chat_prompt_clazz=MyPrompt)
    async with chat_stream:                        # loads the model in its thread
        conversation = chat_stream.new_conversation()
        async for delta in chat_stream.chat(conversation, "hello"):
            print(delta, end="")

The same object serves HTTP requests (``chatstream.adapters.starlette``), console chat
(:meth:`ChatStream.handle_console_input`) and programmatic use, under asyncio or trio.

The facade composes the adapters from above: the model thread and backends
(:mod:`chatstream.adapters.model`), the engine driver, and, through :class:`HttpMethods`, the
HTTP side (:mod:`chatstream.adapters.http`), which knows it only as a
:class:`~chatstream.adapters.service.ChatService`. Nothing below imports this module.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, cast

import anyio

from chatstream.core import (
    AbstractChatPrompt,
    ChatPromptTogetherRedPajamaINCITEChat,
    ChatStreamConfig,
    ChatStreamError,
    ConfigError,
    Conversation,
    DecodingOptions,
    Engine,
    EngineStatistics,
    Finished,
    FinishReason,
    GenerationParams,
    MockParams,
    PenaltyMethod,
    PromptTooLongError,
    Quantize,
    Rejected,
    RejectReason,
    RenderedPrompt,
    TextDelta,
)
from chatstream.core.roles import ClientRoles

from .adapters.driver import EngineDriver, RequestHandle
from .adapters.model.backend import Backend
from .adapters.model.chat_template import (
    chat_template_prompt_class,
    generic_tool_messages,
    has_chat_template,
    render_chat,
    template_messages,
)
from .adapters.model.pool import ModelPool
from .adapters.model.token_bytes import token_bytes
from .adapters.service import SHUTDOWN_ERROR
from .adapters.turn import RequestRejected, Turn
from .chat_stream_http import HttpMethods
from .log_messages import resolve_locale, text

if TYPE_CHECKING:
    from .adapters.service import ChatService

__all__ = ["BackendFactory", "ChatStream", "RequestRejected", "Turn"]

#: Builds a backend for a number of slots; called in the model thread.
BackendFactory = Callable[[int], Backend]

#: Seconds between two log lines about rejected requests (the ones between are counted).
REJECTION_LOG_INTERVAL = 10.0


class ChatStream(HttpMethods):
    """Streaming chat over a causal LM, under load control.

    Every option of the original constructor is here, with its documented default; see
    ``docs/chatstream.md``. Invalid options raise :class:`~chatstream.core.ConfigError` at
    construction, not at the first request.
    """

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        device: Any = None,
        num_of_concurrent_executions: int = 2,
        max_queue_size: int = 5,
        too_many_request_as_http_error: bool = False,
        use_mock_response: bool = False,
        mock_params: Mapping[str, Any] | MockParams | None = None,
        chat_prompt_clazz: type[AbstractChatPrompt] | None = None,
        max_new_tokens: int = 256,
        context_len: int = 1024,
        temperature: float = 1.0,
        top_k: int | None = 50,
        top_p: float = 1.0,
        repetition_penalty: float | None = None,
        repetition_penalty_method: PenaltyMethod = "multiplicative",
        add_special_tokens: bool | None = None,
        request_handler: Any = None,
        logger: logging.Logger | None = None,
        *,
        name: str = "node:0",
        num_gpus: int | None = None,
        locale: str | None = None,
        client_roles: Mapping[str, Any] | None = None,
        max_tokens_per_step: int = 512,
        prefix_cache: bool = True,
        prefix_cache_mb: int = 1024,
        quantize: Quantize | Literal["none"] | None = None,
        torch_threads: int | None = None,
        cuda_graphs: bool | Literal["auto"] = "auto",
        backend: BackendFactory | Sequence[BackendFactory] | None = None,
        served_model_name: str | None = None,
    ) -> None:
        if isinstance(mock_params, Mapping):
            mock_params = MockParams.from_mapping(mock_params)
        self.config = ChatStreamConfig(
            num_of_concurrent_executions=num_of_concurrent_executions,
            max_queue_size=max_queue_size,
            too_many_request_as_http_error=too_many_request_as_http_error,
            use_mock_response=use_mock_response,
            mock_params=mock_params or MockParams(),
            max_new_tokens=max_new_tokens,
            context_len=context_len,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            repetition_penalty_method=repetition_penalty_method,
            add_special_tokens=add_special_tokens,
            max_tokens_per_step=max_tokens_per_step,
            prefix_cache=prefix_cache,
            prefix_cache_mb=prefix_cache_mb,
            quantize=cast("Quantize | None", quantize),
            cuda_graphs=cuda_graphs,
        )
        # A custom backend (one factory per model copy) replaces the mock and transformers.
        self._backend_factories: list[BackendFactory] = (
            [] if backend is None else list(backend) if isinstance(backend, Sequence) else [backend]
        )
        no_model_needed = use_mock_response or bool(self._backend_factories)
        if not no_model_needed and (model is None or tokenizer is None):
            raise ConfigError("model", "a model and a tokenizer are needed (or use_mock_response)")
        if chat_prompt_clazz is None:
            if has_chat_template(tokenizer) and not use_mock_response:
                chat_prompt_clazz = chat_template_prompt_class(tokenizer)
            elif no_model_needed:
                chat_prompt_clazz = ChatPromptTogetherRedPajamaINCITEChat
            else:
                raise ConfigError(
                    "chat_prompt_clazz", "the tokenizer has no chat template; give a prompt class"
                )
        elif not (
            isinstance(chat_prompt_clazz, type)
            and issubclass(chat_prompt_clazz, AbstractChatPrompt)
        ):
            raise ConfigError("chat_prompt_clazz", "must be a subclass of AbstractChatPrompt")
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        # A list of models (one per GPU, or copies) makes a pool behind one queue.
        self._models: list[Any] = list(model) if isinstance(model, list | tuple) else [model]
        if self._backend_factories:
            self._models = [model] * len(self._backend_factories)
        devices = device if isinstance(device, list | tuple) else [device] * len(self._models)
        if len(devices) != len(self._models):
            raise ConfigError("device", "give one device per model, or a single device")
        if len(self._models) > num_of_concurrent_executions:
            raise ConfigError(
                "num_of_concurrent_executions",
                f"must be at least the number of models ({len(self._models)})",
            )
        self._devices: list[Any] = list(devices)
        self.chat_prompt_clazz: type[AbstractChatPrompt] = chat_prompt_clazz
        self.request_handler = request_handler
        self.logger = logger or logging.getLogger("chatstream")
        self.name = name
        self.locale = resolve_locale(locale)
        self.client_roles = client_roles
        # Validated now, so that a bad role definition fails at startup, not per request.
        self.roles = (
            ClientRoles(client_roles) if client_roles is not None else ClientRoles.default()
        )
        self.num_gpus = _count_gpus(self._models, self._devices, num_gpus, use_mock_response)
        self._torch_threads = torch_threads
        self.served_model_name = _served_name(served_model_name)
        self._pool: ModelPool | None = None
        self._drain_requested = False
        self._driver: EngineDriver | None = None
        self._console = Conversation()
        self._rejections_logged_at = float("-inf")
        self._rejections_unlogged = 0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ChatStream:
        if self._driver is not None:
            raise RuntimeError("this ChatStream is already running")
        self.logger.info(text(self.locale, "loading", name=self._model_name()))
        copies = len(self._models)
        capacity = self.config.num_of_concurrent_executions
        bounds = [capacity * g // copies for g in range(copies + 1)]
        pool = ModelPool(
            [
                functools.partial(self._make_backend, index, bounds[index + 1] - bounds[index])
                for index in range(copies)
            ],
            bounds,
        )
        await pool.__aenter__()
        try:
            backend = pool.backends[0]
            config = self._fit_context(pool.backends)
            if not all(getattr(b, "reuses_prefixes", False) for b in pool.backends):
                # A custom backend that knows nothing of reused prefixes prefills them all.
                config = dataclasses.replace(config, prefix_cache=False)
            if not all(getattr(b, "saves_prefixes", False) for b in pool.backends):
                config = dataclasses.replace(config, prefix_cache_mb=0)  # slots only
            engine = Engine(
                config,
                backend,
                slot_groups=copies,
                kv_bytes_per_token=int(getattr(backend, "kv_bytes_per_token", 0)),
            )
            driver = EngineDriver(engine, pool)
            await driver.__aenter__()
        except BaseException:
            await pool.__aexit__(None, None, None)
            raise
        self._pool, self._driver = pool, driver
        self._drain_requested = False
        self.logger.info(
            text(
                self.locale,
                "ready",
                name=backend.name,
                slots=config.num_of_concurrent_executions,
                waiting=config.max_queue_size,
                context=config.context_len,
            )
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        driver, pool = self._driver, self._pool
        self._driver = self._pool = None
        assert driver is not None and pool is not None
        stats = driver.statistics()
        # The block's own exception propagates by itself; the parts only clean up.
        try:
            await driver.__aexit__(None, None, None)
        finally:
            await pool.__aexit__(None, None, None)
        self.logger.info(
            text(
                self.locale,
                "stopped",
                finished=stats.finished_total,
                cancelled=stats.cancelled_total,
                rejected=stats.rejected_total,
            )
        )

    @property
    def running(self) -> bool:
        return self._driver is not None

    @property
    def driver(self) -> EngineDriver:
        if self._driver is None:
            raise RuntimeError("start the ChatStream first: `async with chat_stream:`")
        return self._driver

    @property
    def backend(self) -> Backend:
        """The (first) model's backend; its tokenizer side serves every copy."""
        if self._pool is None:
            raise RuntimeError("start the ChatStream first: `async with chat_stream:`")
        return self._pool.backends[0]

    def statistics(self) -> EngineStatistics:
        stats = self.driver.statistics()
        if self._drain_requested and not stats.draining:
            stats = dataclasses.replace(stats, draining=True)
        return stats

    # ------------------------------------------------------------------ chatting

    def new_conversation(self) -> Conversation:
        return Conversation()

    async def start_turn(
        self,
        conversation: Conversation,
        user_input: str | None,
        *,
        regenerate: bool = False,
        edit_message_id: str | None = None,
        generation_params: Mapping[str, object] | None = None,
    ) -> Turn:
        """Start a turn and submit it; return once the engine has admitted or queued it.

        With ``edit_message_id`` (a user message on the current path), ``user_input`` is a
        new version of that message: the conversation branches there.

        Raises:
            TurnInFlightError: the conversation already has a turn running (409).
            NothingToRegenerateError: regenerate with no user message (400).
            UnknownMessageError: ``edit_message_id`` is no user message on the path (404).
            ConfigError: invalid generation parameters (400).
            PromptTooLongError: the turn does not fit the context (400).
            RequestRejected: queue full (429), draining or model gone (503).
        """
        driver = self._apply_drain()
        params = self.config.generation_params(generation_params)
        if regenerate:
            conversation.start_regenerate(reply_id=_new_id())
        else:
            if user_input is None:
                raise ConfigError("user_input", "is required unless regenerating")
            _check_text("user_input", user_input)
            if edit_message_id is not None:
                conversation.start_edit(
                    edit_message_id, user_input, user_message_id=_new_id(), reply_id=_new_id()
                )
            else:
                conversation.start_turn(user_input, user_message_id=_new_id(), reply_id=_new_id())
        try:
            prompt = await anyio.to_thread.run_sync(self._render, conversation)
            handle = driver.submit(
                prompt.token_ids,
                params,
                DecodingOptions(
                    stop_strings=prompt.stop_strings,
                    stop_token_ids=self.backend.stop_token_ids,
                    replacements=prompt.replacements,
                    strip_leading_whitespace=prompt.strip_reply,
                ),
                metadata={
                    "user_input": conversation.find(conversation.reply.in_reply_to or "").content,
                    "turn": sum(1 for m in conversation.messages if m.role == "user"),
                },
            )
        except BaseException:
            conversation.abort_turn()
            raise
        if isinstance(handle.outcome, Rejected):
            handle.close()
            conversation.abort_turn()
            self._log_rejection(handle.outcome.reason)
            raise RequestRejected(handle.outcome.reason)
        return Turn(conversation, handle, prompt)

    async def submit_messages(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        generation_params: Mapping[str, object] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> RequestHandle:
        """Stateless generation for OpenAI-style messages (the OpenAI-compatible API):
        ``role`` (system, developer, user, assistant, tool) and ``content``, with the
        assistant's ``tool_calls`` and the tool's ``tool_call_id``. Rendered with the
        tokenizer's chat template when it has one (``tools`` with it when the template renders
        them, otherwise described in a system message), else with the prompt class. An
        assistant message last is continued (a prefill). Returns the request's handle.

        Raises:
            ConfigError: malformed messages or generation parameters (400).
            PromptTooLongError: the messages do not fit the context (400).
            RequestRejected: queue full (429), draining or model gone (503).
        """
        self._apply_drain()
        params = self.config.generation_params(generation_params)
        if not messages:
            raise ConfigError("messages", "must not be empty")
        for index, message in enumerate(messages):
            if message.get("role") not in _MESSAGE_ROLES:
                raise ConfigError(
                    f"messages[{index}].role", f"unknown role {message.get('role')!r}"
                )
            _check_text(f"messages[{index}].content", str(message.get("content") or ""))
        users = [str(m.get("content") or "") for m in messages if m.get("role") == "user"]
        await self._check_grammar(params)
        rendered = await anyio.to_thread.run_sync(self._render_messages, list(messages), tools)
        token_ids, stop_strings, replacements, strip = rendered
        return self._submit_rendered(
            "messages",
            token_ids,
            params,
            DecodingOptions(
                stop_strings=stop_strings,
                stop_token_ids=self.backend.stop_token_ids,
                replacements=replacements,
                strip_leading_whitespace=strip,
            ),
            metadata={"user_input": users[-1] if users else "", "turn": len(users)},
        )

    async def submit_prompt(
        self,
        prompt: str | Sequence[int],
        *,
        generation_params: Mapping[str, object] | None = None,
    ) -> RequestHandle:
        """Stateless generation that continues ``prompt`` as it is, text or token ids, with no
        chat template (the OpenAI completions API). Returns the request's handle.

        Raises:
            ConfigError: an empty prompt, ids outside the vocabulary, invalid parameters.
            PromptTooLongError, RequestRejected: as :meth:`submit_messages`.
        """
        self._apply_drain()
        params = self.config.generation_params(generation_params)
        await self._check_grammar(params)
        if isinstance(prompt, str):
            _check_text("prompt", prompt)
            token_ids = await anyio.to_thread.run_sync(
                lambda: _encode(self.backend, prompt, add_special_tokens=None, field="prompt")
            )
        else:
            token_ids = list(prompt)
            self.check_token_ids("prompt", token_ids)
        if not token_ids:
            raise ConfigError("prompt", "must not be empty")
        return self._submit_rendered(
            "prompt",
            tuple(token_ids),
            params,
            DecodingOptions(stop_token_ids=self.backend.stop_token_ids),
            metadata={"user_input": prompt if isinstance(prompt, str) else "", "turn": 1},
        )

    async def _check_grammar(self, params: GenerationParams) -> None:
        """Compile the request's grammar at the edge, in a worker thread.

        Raises:
            ConfigError: (``grammar``) the backend has no grammar engine, or cannot use this
                grammar.
        """
        grammar = params.grammar
        if grammar is None:
            return
        check = getattr(self.backend, "check_grammar", None)
        if check is None:
            raise ConfigError("grammar", "this backend does not constrain replies")
        try:
            await anyio.to_thread.run_sync(check, grammar)
        except ValueError as error:  # GrammarError, without importing the model layer here
            raise ConfigError("grammar", str(error)) from None

    def _submit_rendered(
        self,
        option: str,
        token_ids: tuple[int, ...],
        params: GenerationParams,
        decoding: DecodingOptions,
        metadata: Mapping[str, Any],
    ) -> RequestHandle:
        limit = self.driver.engine.config.context_len
        if len(token_ids) >= limit:
            raise PromptTooLongError(
                f"the {option} need {len(token_ids)} tokens; the context holds {limit}"
            )
        handle = self.driver.submit(token_ids, params, decoding, metadata=metadata)
        if isinstance(handle.outcome, Rejected):
            handle.close()
            self._log_rejection(handle.outcome.reason)
            raise RequestRejected(handle.outcome.reason)
        return handle

    @property
    def vocab_size(self) -> int:
        """Token ids a client may name (logit bias, stop token ids, prompts) are below this."""
        size: int | None = getattr(self.backend, "vocab_size", None)
        return size if size is not None else len(self.tokenizer)

    def check_token_ids(self, option: str, token_ids: Sequence[int]) -> None:
        """Refuse ids the tokenizer does not have, naming ``option``.

        Raises:
            ConfigError: an id below 0 or past the vocabulary.
        """
        limit = self.vocab_size
        for index, token in enumerate(token_ids):
            if not 0 <= token < limit:
                raise ConfigError(
                    f"{option}[{index}]",
                    f"token id {token} is not in the vocabulary (0..{limit - 1})",
                )

    def token_piece(self, token_id: int) -> tuple[str, bytes]:
        """One token's text and exact bytes, as log-probabilities report them (the text of a
        token that ends inside a character has U+FFFD for the incomplete part)."""
        exact = None if self.config.use_mock_response else token_bytes(self.tokenizer, token_id)
        if exact is None:
            text = self.backend.decode([token_id])
            return text, text.encode()
        return exact.decode("utf-8", errors="replace"), exact

    def _render_messages(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = True,
        add_special_tokens: bool | None = None,
    ) -> tuple[tuple[int, ...], tuple[str, ...], tuple[tuple[str, str], ...], bool]:
        # In a worker thread: templates and tokenizers are not for the event loop.
        backend = self.backend
        if not self.config.use_mock_response and has_chat_template(self.tokenizer):
            try:
                text = render_chat(
                    self.tokenizer, messages, tools, add_generation_prompt=add_generation_prompt
                )
            except Exception as error:  # a template may refuse messages (raise_exception)
                raise ConfigError(
                    "messages", f"the chat template refuses them: {error}"[:500]
                ) from None
            # The template writes the special tokens itself.
            ids = _encode(
                backend, text, add_special_tokens=bool(add_special_tokens), field="messages"
            )
            return tuple(ids), (), (), messages[-1]["role"] != "assistant"
        if tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
            messages = generic_tool_messages(template_messages(messages), tools or ())
        prompt = self.chat_prompt_clazz()
        prompt.build_initial_prompt(prompt)
        prefill = None
        if messages[-1]["role"] == "assistant":
            prefill = str(messages[-1].get("content") or "")
            messages = messages[:-1]
        for message in messages:
            role, content = message["role"], str(message.get("content") or "")
            if role in ("system", "developer"):
                prompt.set_system(content)
            elif role == "assistant":
                prompt.add_responder_msg(content)
            else:
                prompt.add_requester_msg(content)
        if add_generation_prompt:
            prompt.add_responder_msg(None)
        add_special = add_special_tokens
        if add_special is None:
            add_special = self.config.add_special_tokens
        if add_special is None:
            add_special = prompt.add_special_tokens
        text = prompt.create_prompt() + (prefill or "")
        ids = _encode(backend, text, add_special_tokens=add_special, field="messages")
        return (
            tuple(ids),
            tuple(prompt.get_stop_strs()),
            tuple(prompt.get_replacement_when_output() or ()),
            prompt.strip_reply and prefill is None,
        )

    async def chat(
        self,
        conversation: Conversation,
        user_input: str | None,
        *,
        regenerate: bool = False,
        generation_params: Mapping[str, object] | None = None,
    ) -> AsyncGenerator[str, None]:
        """Stream the reply to ``user_input`` as text deltas, keeping ``conversation``.

        Leaving the loop early cancels the generation; the partial reply stays in the
        history, marked cancelled.
        """
        turn = await self.start_turn(
            conversation, user_input, regenerate=regenerate, generation_params=generation_params
        )
        async with turn:
            async for event in turn:
                if isinstance(event, TextDelta):
                    yield event.text
                elif isinstance(event, Finished) and event.reason is FinishReason.ERROR:
                    raise ChatStreamError(f"generation failed: {event.error}")

    async def handle_console_input(
        self, user_input: str
    ) -> AsyncGenerator[tuple[str, str, str], None]:
        """Console chat, as in the original: yields ``(response_text, updated_text, pos)``,
        where ``response_text`` is the reply so far, ``updated_text`` the new part, and
        ``pos`` is "begin", "mid" or "end". The history is kept between calls.
        """
        response = ""
        position = "begin"
        async with aclosing(self.chat(self._console, user_input)) as deltas:
            async for delta in deltas:
                response += delta
                yield response, delta, position
                position = "mid"
        yield response, "", "end"

    @property
    def model_id(self) -> str:
        """The model's name as the OpenAI-compatible API reports it: ``served_model_name``
        if given, else the model's own."""
        return self.served_model_name or self._model_name()

    @property
    def max_model_len(self) -> int:
        """Prompt plus reply tokens one request may hold (the context length in force)."""
        return self.driver.engine.config.context_len

    async def tokenize(
        self,
        prompt: str | Sequence[Mapping[str, str]],
        *,
        add_special_tokens: bool | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """The token ids of a text, or of messages rendered as :meth:`submit_messages`
        renders them (``add_generation_prompt=False`` leaves out the assistant's opening);
        ``add_special_tokens=None`` adds what a prompt of that kind gets.

        Raises:
            ConfigError: text the tokenizer refuses, or malformed messages.
        """
        backend = self.backend  # raises unless running
        if isinstance(prompt, str):
            _check_text("prompt", prompt)
            encode = functools.partial(
                _encode, backend, prompt, add_special_tokens=add_special_tokens, field="prompt"
            )
            return await anyio.to_thread.run_sync(encode)
        for index, message in enumerate(prompt):
            _check_text(f"messages[{index}].content", message.get("content", ""))
        render = functools.partial(
            self._render_messages,
            list(prompt),
            add_generation_prompt=add_generation_prompt,
            add_special_tokens=add_special_tokens,
        )
        return list((await anyio.to_thread.run_sync(render))[0])

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of token ids, special tokens skipped.

        Raises:
            ConfigError: an id outside the vocabulary (the option named ``tokens``).
        """
        backend = self.backend
        vocab_size: int | None = getattr(backend, "vocab_size", None)
        outside = [t for t in token_ids if t < 0 or (vocab_size is not None and t >= vocab_size)]
        if outside:
            top = "" if vocab_size is None else f" (0 to {vocab_size - 1})"
            raise ConfigError("tokens", f"ids outside the vocabulary{top}: {outside[:5]}")
        text = await anyio.to_thread.run_sync(backend.decode, list(token_ids))
        # A lone surrogate (a mock's code point) is no character a response can carry.
        return text.encode("utf-8", "replace").decode("utf-8")

    # ------------------------------------------------------------------ draining

    async def start_queue_worker(self) -> None:
        """The original's startup call: starts this ChatStream (``await stop_queue_worker()``
        at shutdown, in the same lifespan). Prefer ``async with chat_stream:`` in a lifespan.
        Unlike the original, it installs no SIGINT handler."""
        await self.__aenter__()

    async def stop_queue_worker(self) -> None:
        """Stop what :meth:`start_queue_worker` started."""
        await self.__aexit__(None, None, None)

    def start_drain(self) -> None:
        """Admit nothing new (503, and ``/health`` says draining); running and waiting
        requests go on.

        Safe to call from a signal handler: it only sets a flag, which the event loop
        applies to the engine before the next admission.
        """
        self._drain_requested = True

    @property
    def draining(self) -> bool:
        return self._drain_requested

    def _apply_drain(self) -> EngineDriver:
        driver = self.driver
        if self._drain_requested and not driver.statistics().draining:
            driver.drain()
        return driver

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing runs or waits, at most ``timeout`` seconds; True if idle."""
        with anyio.move_on_after(timeout):
            while self._driver is not None:
                stats = self._driver.statistics()
                if stats.running == 0 and stats.waiting == 0:
                    return True
                await anyio.sleep(0.05)
            return True
        return False

    async def drain(self, timeout: float) -> bool:
        """Graceful shutdown: :meth:`start_drain`, then let work finish for up to
        ``timeout`` seconds. Whatever still runs or waits then ends with
        :data:`~chatstream.adapters.service.SHUTDOWN_ERROR`, which its client is told.
        True if everything finished in time."""
        self.start_drain()
        if self._driver is not None:
            self._apply_drain()  # the waiting room shuts now, not at the next admission
        if await self.wait_idle(timeout):
            return True
        if self._driver is not None:
            cut = self._driver.cancel_all(error=SHUTDOWN_ERROR)
            self.logger.warning("shutdown: %d requests cut after a %g s drain", cut, timeout)
        return False

    def render_history(self, conversation: Conversation) -> str | None:
        """The conversation as the prompt class renders it (for ``get_prompt``)."""
        return conversation.render_history(self.chat_prompt_clazz)

    def clear_console(self) -> None:
        self._console.clear()

    # ------------------------------------------------------------------ internals

    def _render(self, conversation: Conversation) -> RenderedPrompt:
        backend = self.backend
        add_special = self.config.add_special_tokens
        if add_special is None:
            add_special = self.chat_prompt_clazz.add_special_tokens

        def encode(text: str) -> list[int]:
            return _encode(backend, text, add_special_tokens=add_special)

        return conversation.render(
            self.chat_prompt_clazz,
            encode=encode,
            budget=self.driver.engine.config.prompt_budget,
        )

    def _make_backend(self, index: int, num_slots: int) -> Backend:
        # Runs in the model thread: imports and loading stay off the event loop.
        if self._backend_factories:
            return self._backend_factories[index](num_slots)
        if self.config.use_mock_response:
            from .adapters.model.mock_backend import MockBackend

            return MockBackend(self.config.mock_params)
        import torch

        from .adapters.model.transformers_backend import TransformersBackend

        if self._torch_threads is not None:
            torch.set_num_threads(self._torch_threads)
        if self.config.quantize is not None:
            from .adapters.model.quantization import quantize_model

            report = quantize_model(
                self._models[index], self.config.quantize, tokenizer=self.tokenizer
            )
            self.logger.info(
                text(
                    self.locale,
                    f"quantized_{report.mode}",
                    layers=report.int8_layers,
                    smoothed=report.smoothed_layers,
                    bits=report.activation_bits,
                )
            )
        return TransformersBackend(
            self._models[index],
            self.tokenizer,
            num_slots=num_slots,
            max_positions=self.config.context_len,
            device=self._devices[index],
            name=self._model_name(),
            cuda_graphs=self.config.cuda_graphs,
        )

    def _fit_context(self, backends: list[Backend]) -> ChatStreamConfig:
        limits = [b.max_context for b in backends if b.max_context is not None]
        if not limits or min(limits) >= self.config.context_len:
            return self.config
        limit = min(limits)
        if limit <= self.config.max_new_tokens:
            raise ConfigError(
                "context_len",
                f"the model holds {limit} tokens, not enough for max_new_tokens "
                f"({self.config.max_new_tokens}) and a prompt",
            )
        self.logger.warning(
            text(self.locale, "context_clamped", asked=self.config.context_len, used=limit)
        )
        return dataclasses.replace(self.config, context_len=limit)

    def _model_name(self) -> str:
        if self._pool is not None:
            return self._pool.backends[0].name
        if self._backend_factories:
            return "custom backend"
        if self.config.use_mock_response:
            return "mock"
        config = getattr(self._models[0], "config", None)
        name = str(getattr(config, "_name_or_path", "") or type(self._models[0]).__name__)
        # A local folder's name, not its whole path (which says more than a client needs).
        return name.rstrip("/").rsplit("/", 1)[-1]

    def _log_rejection(self, reason: RejectReason) -> None:
        # A burst of rejections is one line, then a count per interval, not a line each.
        now = time.monotonic()
        if now - self._rejections_logged_at < REJECTION_LOG_INTERVAL:
            self._rejections_unlogged += 1
            return
        if self._rejections_unlogged:
            seconds = now - self._rejections_logged_at
            count = self._rejections_unlogged
            self.logger.warning(text(self.locale, "rejected_since", count=count, seconds=seconds))
        self._rejections_logged_at, self._rejections_unlogged = now, 0
        stats = self.driver.statistics()
        self.logger.warning(
            text(
                self.locale,
                "rejected",
                reason=reason,
                running=stats.running,
                capacity=stats.capacity,
                waiting=stats.waiting,
                max_waiting=stats.max_waiting,
            )
        )


def _new_id() -> str:
    return uuid.uuid4().hex


#: The roles of the OpenAI-style messages ``submit_messages`` takes.
_MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def _check_text(option: str, text: str) -> None:
    """Refuse lone surrogates (``"\\ud800"``): no tokenizer, store or JSON can take them."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(option, "holds a lone surrogate, which is not a character") from None


def _encode(
    backend: Backend, text: str, *, add_special_tokens: bool | None, field: str = "user_input"
) -> list[int]:
    # What the client wrote is what a tokenizer refuses (a TypeError or ValueError from the
    # Rust side): a 400 for that request naming ``field``, not a 500 or a failed step.
    try:
        return backend.encode(text, add_special_tokens=add_special_tokens)
    except (TypeError, ValueError, UnicodeError) as error:
        raise ConfigError(
            field, f"the tokenizer cannot encode this text ({type(error).__name__})"
        ) from None


def _served_name(name: str | None) -> str | None:
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError("served_model_name", f"must be a non-empty string, got {name!r}")
    return name


def _count_gpus(models: list[Any], devices: list[Any], num_gpus: int | None, mock: bool) -> int:
    """GPUs to report in resource usage: the CUDA devices the models live on."""
    if mock:
        return 0
    gpus: set[str] = set()
    for model, device in zip(models, devices, strict=True):
        places = list(getattr(model, "hf_device_map", {}).values())  # device_map loading
        if device is not None:
            places.append(device)
        elif not places and hasattr(model, "get_input_embeddings"):
            places.append(model.get_input_embeddings().weight.device)
        for place in places:
            name = f"cuda:{place}" if isinstance(place, int) else str(place)
            if name.startswith("cuda"):
                gpus.add(name if ":" in name else "cuda:0")
    if not gpus:
        return 0
    return num_gpus if num_gpus is not None else len(gpus)


if TYPE_CHECKING:
    # ChatStream is what the HTTP side is typed against (checked by mypy, costs nothing).
    _: type[ChatService] = ChatStream
