"""Validated, frozen configuration.

:class:`ChatStreamConfig` holds every option of the original ``ChatStream(...)`` constructor
that is a plain value (the model, tokenizer, logger and request handler are objects and live
in the adapters), with the documented defaults and none of the original's traps: the mock
default really is ``"round"``, a queue size of 0 means *no* waiting room, and a context that
cannot hold ``max_new_tokens`` is refused up front instead of silently cutting the prompt.

:class:`GenerationParams` is the per-request view of the sampling options. Per-request
overrides (HTTP ``generation_params``, OpenAI fields) go through
:meth:`GenerationParams.with_overrides`, so they meet exactly the same checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Final, Literal, cast, get_args

from .errors import ConfigError

__all__ = [
    "GREEDY_TEMPERATURE",
    "MAX_SEED",
    "MAX_STOP_LENGTH",
    "MAX_STOP_STRINGS",
    "MAX_TOP_K",
    "ChatStreamConfig",
    "GenerationParams",
    "MockParams",
    "MockType",
    "PenaltyMethod",
    "Quantize",
    "choose_quantize",
]

PenaltyMethod = Literal["multiplicative", "subtractive"]
MockType = Literal["round", "long", "echo"]
#: Weights as loaded (None), int8 weights and activations on a CPU, or bfloat16 weights.
Quantize = Literal["int8", "bf16"]


def choose_quantize(*, device: str | None, embedded: bool, int8_kernels: bool) -> Quantize | None:
    """What ``--quantize auto`` means: int8 only where it passed the quality gate (the
    embedded model, on a CPU whose int8 kernels keep 8-bit activations: ``int8_kernels``);
    the weights as loaded otherwise (other models have not been gated)."""
    on_cpu = device is None or device.split(":")[0] == "cpu"
    return "int8" if embedded and on_cpu and int8_kernels else None


#: Below this temperature sampling is greedy (argmax), as in the original.
GREEDY_TEMPERATURE: Final = 1e-4
#: The largest seed: generators take a signed 64-bit integer.
MAX_SEED: Final = 2**63 - 1
#: Stop strings one request may add (OpenAI allows 4), and the length of each in characters:
#: every delta is matched against them on the event loop, so a client must not choose how long
#: that takes.
MAX_STOP_STRINGS: Final = 16
MAX_STOP_LENGTH: Final = 256
#: Past any vocabulary: a larger top-k means the same as this one.
MAX_TOP_K: Final = 2**31 - 1


def _int(option: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    # bool is an int subclass; `true` in a JSON body is not a size.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(option, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(option, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(option, f"must be at most {maximum}, got {value}")
    return value


def _float(option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(option, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        # An int too large for a float (a JSON body may carry one): not a 500.
        raise ConfigError(option, "must be finite, got an integer too large for a float") from None
    if not math.isfinite(number):
        raise ConfigError(option, f"must be finite, got {value!r}")
    return number


def _bool(option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(option, f"must be true or false, got {value!r}")
    return value


def _choice(option: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        expected = ", ".join(repr(c) for c in choices)
        raise ConfigError(option, f"must be one of {expected}, got {value!r}")
    return str(value)


def _set(instance: object, name: str, value: object) -> None:
    # Normalising a field of a frozen dataclass during __post_init__.
    object.__setattr__(instance, name, value)


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationParams:
    """How one reply is generated.

    Sampling follows the HuggingFace order: repetition penalty, temperature, top-k, then
    top-p, then a draw. A temperature below :data:`GREEDY_TEMPERATURE` means greedy.
    """

    #: Upper bound on the tokens generated for one reply.
    max_new_tokens: int = 256
    #: Softmax temperature; 0 (or anything below 1e-4) is greedy decoding.
    temperature: float = 1.0
    #: Keep only the k most likely tokens; None disables top-k.
    top_k: int | None = 50
    #: Keep the smallest set of tokens whose probability reaches p; 1.0 disables top-p.
    top_p: float = 1.0
    #: None disables the penalty.
    repetition_penalty: float | None = None
    #: "multiplicative" (CTRL/HF: divide positive logits, multiply negative ones) or
    #: "subtractive" (subtract from the logit); once per distinct token already seen.
    repetition_penalty_method: PenaltyMethod = "multiplicative"
    #: Seed of this request's random generator, in [0, 2**63); None draws from the backend's
    #: generator.
    seed: int | None = None
    #: Extra stop strings for this request, on top of the prompt class's: at most
    #: :data:`MAX_STOP_STRINGS`, each at most :data:`MAX_STOP_LENGTH` characters.
    stop: tuple[str, ...] = ()
    #: Keep generating past the end-of-sequence tokens, up to ``max_new_tokens`` (for
    #: benchmarks that need replies of a fixed length).
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        _int("max_new_tokens", self.max_new_tokens, minimum=1)
        temperature = _float("temperature", self.temperature)
        if temperature < 0:
            raise ConfigError("temperature", f"must not be negative, got {self.temperature}")
        _set(self, "temperature", temperature)
        if self.top_k is not None:
            _int("top_k", self.top_k, minimum=1, maximum=MAX_TOP_K)
        top_p = _float("top_p", self.top_p)
        if not 0 < top_p <= 1:
            raise ConfigError("top_p", f"must be in (0, 1], got {self.top_p}")
        _set(self, "top_p", top_p)
        method = _choice(
            "repetition_penalty_method",
            self.repetition_penalty_method,
            get_args(PenaltyMethod),
        )
        if self.repetition_penalty is not None:
            penalty = _float("repetition_penalty", self.repetition_penalty)
            if method == "multiplicative" and penalty <= 0:
                raise ConfigError(
                    "repetition_penalty",
                    f"must be greater than 0 for the multiplicative method, got {penalty}",
                )
            _set(self, "repetition_penalty", penalty)
        if self.seed is not None:
            _int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        _bool("ignore_eos", self.ignore_eos)
        stop: object = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, tuple | list):
            raise ConfigError("stop", f"must be a list of non-empty strings, got {self.stop!r}")
        if len(stop) > MAX_STOP_STRINGS:
            raise ConfigError("stop", f"at most {MAX_STOP_STRINGS} strings, got {len(stop)}")
        for index, string in enumerate(stop):
            if not isinstance(string, str) or not string:
                raise ConfigError(f"stop[{index}]", f"must be a non-empty string, got {string!r}")
            if len(string) > MAX_STOP_LENGTH:
                raise ConfigError(
                    f"stop[{index}]", f"at most {MAX_STOP_LENGTH} characters, got {len(string)}"
                )
        _set(self, "stop", tuple(stop))

    @property
    def greedy(self) -> bool:
        """True when the temperature asks for argmax decoding."""
        return self.temperature < GREEDY_TEMPERATURE

    def with_overrides(self, overrides: Mapping[str, object] | None) -> GenerationParams:
        """A copy with some options replaced, validated like the constructor.

        Unknown names raise :class:`ConfigError` naming them; a value of None keeps the
        current value, except for ``top_k``, ``repetition_penalty`` and ``seed`` where None
        means "off".

        Raises:
            ConfigError: an unknown option or an invalid value.
        """
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        unknown = sorted(str(name) for name in overrides if name not in known)
        if unknown:
            raise ConfigError(
                unknown[0], f"unknown generation parameter (known: {', '.join(sorted(known))})"
            )
        nullable = {"top_k", "repetition_penalty", "seed"}
        changes = {k: v for k, v in overrides.items() if v is not None or k in nullable}
        if isinstance(changes.get("stop"), list):
            changes["stop"] = tuple(cast("list[str]", changes["stop"]))
        return replace(self, **changes)  # type: ignore[arg-type]  # validated by __post_init__


@dataclass(frozen=True, slots=True, kw_only=True)
class MockParams:
    """Options of the mock backend (``use_mock_response=True``)."""

    #: "round": one line per turn; "long": a long text; "echo": the user's input back.
    type: MockType = "round"
    #: Seconds before the first token.
    initial_wait_sec: float = 0.0
    #: Seconds before each token.
    time_per_token_sec: float = 0.1

    def __post_init__(self) -> None:
        _choice("mock_params.type", self.type, get_args(MockType))
        for name in ("initial_wait_sec", "time_per_token_sec"):
            value = _float(f"mock_params.{name}", getattr(self, name))
            if value < 0:
                raise ConfigError(f"mock_params.{name}", f"must not be negative, got {value}")
            _set(self, name, value)

    @classmethod
    def from_mapping(cls, params: Mapping[str, object]) -> MockParams:
        """Build from the original's ``mock_params`` dict, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        for key in params:
            if key not in known:
                raise ConfigError(
                    f"mock_params.{key}", f"unknown key (known: {', '.join(sorted(known))})"
                )
        return cls(**params)  # type: ignore[arg-type]  # validated by __post_init__


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatStreamConfig:
    """Every plain-value option of ``ChatStream(...)``, validated.

    Raises:
        ConfigError: at construction, naming the first invalid option.
    """

    #: Requests generating at once; also the batch size of continuous batching.
    num_of_concurrent_executions: int = 2
    #: Requests allowed to wait for a slot; the next one is rejected. 0: no waiting room.
    max_queue_size: int = 5
    #: Answer a rejection with HTTP 429 (True) or, as the original did, 200 (False).
    too_many_request_as_http_error: bool = False
    #: Use the mock backend instead of a model.
    use_mock_response: bool = False
    #: Options of the mock backend.
    mock_params: MockParams = field(default_factory=MockParams)
    #: Default upper bound on generated tokens per reply.
    max_new_tokens: int = 256
    #: Tokens of prompt plus reply the model may see; the prompt gets
    #: ``context_len - max_new_tokens`` of them.
    context_len: int = 1024
    #: Default sampling temperature.
    temperature: float = 1.0
    #: Default top-k; None disables it.
    top_k: int | None = 50
    #: Default top-p.
    top_p: float = 1.0
    #: Default repetition penalty; None disables it.
    repetition_penalty: float | None = None
    #: "multiplicative" or "subtractive".
    repetition_penalty_method: PenaltyMethod = "multiplicative"
    #: None: the tokenizer's own default; True/False: force special tokens on or off.
    add_special_tokens: bool | None = None
    #: Prompt and decode tokens one model step may process; long prompts are prefilled in
    #: chunks of at most this size so that running streams keep advancing meanwhile.
    max_tokens_per_step: int = 512
    #: Keep the KV of finished requests in their slots and let a prompt that begins with
    #: the same token ids take that slot and prefill only the rest (see ``prefix_cache``).
    prefix_cache: bool = True
    #: Host memory (MiB) for the KV of conversations no slot holds any more, restored into
    #: a slot when they come back (least recently saved evicted first); 0 keeps none.
    prefix_cache_mb: int = 1024
    #: "int8": int8 weights and activations (CPU only); "bf16": bfloat16 weights; None (or
    #: "none"): the weights as loaded.
    quantize: Quantize | None = None

    def __post_init__(self) -> None:
        _int("num_of_concurrent_executions", self.num_of_concurrent_executions, minimum=1)
        _int("max_queue_size", self.max_queue_size, minimum=0)
        _bool("too_many_request_as_http_error", self.too_many_request_as_http_error)
        _bool("use_mock_response", self.use_mock_response)
        _bool("prefix_cache", self.prefix_cache)
        _int("prefix_cache_mb", self.prefix_cache_mb, minimum=0, maximum=2**30)
        if self.quantize is not None:
            quantize = _choice("quantize", self.quantize, (*get_args(Quantize), "none"))
            _set(self, "quantize", None if quantize == "none" else quantize)
        if isinstance(self.mock_params, Mapping):
            _set(self, "mock_params", MockParams.from_mapping(self.mock_params))
        elif not isinstance(self.mock_params, MockParams):
            raise ConfigError("mock_params", f"must be a dict, got {self.mock_params!r}")
        _int("context_len", self.context_len, minimum=2)
        if self.add_special_tokens is not None:
            _bool("add_special_tokens", self.add_special_tokens)
        _int(
            "max_tokens_per_step",
            self.max_tokens_per_step,
            minimum=self.num_of_concurrent_executions + 1,
        )
        defaults = self.generation_defaults  # validates the sampling options
        self._check_fits_context(defaults)
        for name in ("temperature", "top_p", "repetition_penalty"):
            _set(self, name, getattr(defaults, name))

    @property
    def generation_defaults(self) -> GenerationParams:
        """The sampling options every request starts from."""
        return GenerationParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            repetition_penalty_method=self.repetition_penalty_method,
        )

    def generation_params(self, overrides: Mapping[str, object] | None = None) -> GenerationParams:
        """The defaults with per-request overrides applied and validated.

        Raises:
            ConfigError: an unknown option, an invalid value, or a ``max_new_tokens`` that
                leaves no room for the prompt in ``context_len``.
        """
        params = self.generation_defaults.with_overrides(overrides)
        self._check_fits_context(params)
        return params

    @property
    def prompt_budget(self) -> int:
        """Tokens a prompt may use: ``context_len - max_new_tokens``."""
        return self.context_len - self.max_new_tokens

    def _check_fits_context(self, params: GenerationParams) -> None:
        if params.max_new_tokens >= self.context_len:
            raise ConfigError(
                "max_new_tokens",
                f"must be less than context_len ({self.context_len}) so that a prompt fits, "
                f"got {params.max_new_tokens}",
            )
