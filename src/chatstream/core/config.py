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
    "MAX_LOGIT_BIAS",
    "MAX_SEED",
    "MAX_STOP_LENGTH",
    "MAX_STOP_STRINGS",
    "MAX_STOP_TOKEN_IDS",
    "MAX_TOP_K",
    "MAX_TOP_LOGPROBS",
    "ChatStreamConfig",
    "GenerationParams",
    "Grammar",
    "GrammarKind",
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
#: Alternatives reported per generated token (OpenAI's limit).
MAX_TOP_LOGPROBS: Final = 20
#: Entries of one request's logit bias and of its extra stop token ids: each is applied at
#: every step of the request.
MAX_LOGIT_BIAS: Final = 300
MAX_STOP_TOKEN_IDS: Final = 64
#: The range OpenAI gives presence and frequency penalties, and logit biases.
_PENALTY_RANGE: Final = 2.0
_BIAS_RANGE: Final = 100.0

#: What a grammar constrains replies to: any JSON object, JSON valid against a JSON Schema, a
#: regular expression, or an EBNF grammar (GBNF dialect).
GrammarKind = Literal["json_object", "json_schema", "regex", "ebnf"]


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


def _logit_bias(value: object) -> tuple[tuple[int, float], ...]:
    pairs: object = value
    if isinstance(value, Mapping):
        pairs = sorted(value.items(), key=lambda item: str(item[0]))
    if not isinstance(pairs, tuple | list):
        raise ConfigError("logit_bias", f"must map token ids to numbers, got {value!r}")
    if len(pairs) > MAX_LOGIT_BIAS:
        raise ConfigError("logit_bias", f"at most {MAX_LOGIT_BIAS} entries, got {len(pairs)}")
    checked = []
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ConfigError("logit_bias", f"must map token ids to numbers, got {pair!r}")
        token, bias = pair
        if isinstance(token, str) and token.isascii() and token.isdigit():
            token = int(token)  # a JSON object's keys are strings
        _int(f"logit_bias[{token!r}]", token, minimum=0)
        number = _float(f"logit_bias[{token}]", bias)
        if not -_BIAS_RANGE <= number <= _BIAS_RANGE:
            raise ConfigError(f"logit_bias[{token}]", f"must be in [-100, 100], got {number}")
        checked.append((int(token), number))
    if len({token for token, _ in checked}) != len(checked):
        raise ConfigError("logit_bias", "a token id appears twice")
    return tuple(sorted(checked))


def _token_ids(option: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, tuple | list):
        raise ConfigError(option, f"must be a list of token ids, got {value!r}")
    if len(value) > MAX_STOP_TOKEN_IDS:
        raise ConfigError(option, f"at most {MAX_STOP_TOKEN_IDS} ids, got {len(value)}")
    return tuple(_int(f"{option}[{i}]", token, minimum=0) for i, token in enumerate(value))


@dataclass(frozen=True, slots=True)
class Grammar:
    """A constraint on a reply's text, applied token by token by the backend's grammar
    engine. ``source`` is the schema's JSON text, the expression or the grammar (empty for
    ``json_object``); ``strict`` closes the schema's objects to the properties they list
    (OpenAI's strict mode)."""

    kind: GrammarKind
    source: str = ""
    strict: bool = False

    def __post_init__(self) -> None:
        _choice("grammar.kind", self.kind, get_args(GrammarKind))
        if not isinstance(self.source, str):
            raise ConfigError("grammar.source", f"must be a string, got {self.source!r}")
        if self.kind != "json_object" and not self.source:
            raise ConfigError("grammar.source", f"a {self.kind} grammar needs a source")
        _bool("grammar.strict", self.strict)


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationParams:
    """How one reply is generated.

    Sampling order, per row: the grammar's mask, stop tokens masked before ``min_tokens``,
    the logit bias, the repetition penalty, the presence and frequency penalties, then greedy
    argmax or temperature, min-p, top-k, top-p and a draw (min-p keeps the tokens at least
    ``min_p`` times as likely as the best one, so it commutes with top-k). A temperature below
    :data:`GREEDY_TEMPERATURE` means greedy.
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
    #: benchmarks that need replies of a fixed length). ``stop_token_ids`` still stop.
    ignore_eos: bool = False
    #: In [-2, 2]: subtracted once from the logit of every token already generated
    #: (OpenAI's presence penalty; the prompt does not count).
    presence_penalty: float = 0.0
    #: In [-2, 2]: subtracted from a token's logit once per time it was generated.
    frequency_penalty: float = 0.0
    #: (token id, bias in [-100, 100]) pairs added to the logits, at most
    #: :data:`MAX_LOGIT_BIAS`; a mapping is accepted and sorted. Ids past the vocabulary are
    #: the adapter's to refuse (the core does not know the vocabulary).
    logit_bias: tuple[tuple[int, float], ...] = ()
    #: In [0, 1]: drop the tokens less than ``min_p`` times as likely as the best one.
    min_p: float = 0.0
    #: The end-of-sequence and ``stop_token_ids`` tokens cannot be sampled before this many
    #: tokens were generated (stop strings still stop).
    min_tokens: int = 0
    #: Extra token ids that end the reply (the token itself is not part of the text); at most
    #: :data:`MAX_STOP_TOKEN_IDS`.
    stop_token_ids: tuple[int, ...] = ()
    #: Report the log-probability of each generated token under the model (before any
    #: sampling option changed the distribution) with this many most likely alternatives,
    #: 0 to :data:`MAX_TOP_LOGPROBS`; None reports nothing.
    logprobs: int | None = None
    #: Constrain the reply to a grammar; None leaves it free.
    grammar: Grammar | None = None

    def __post_init__(self) -> None:
        _int("max_new_tokens", self.max_new_tokens, minimum=1)
        for name in ("presence_penalty", "frequency_penalty"):
            value = _float(name, getattr(self, name))
            if not -_PENALTY_RANGE <= value <= _PENALTY_RANGE:
                raise ConfigError(name, f"must be in [-2, 2], got {value}")
            _set(self, name, value)
        _set(self, "logit_bias", _logit_bias(self.logit_bias))
        min_p = _float("min_p", self.min_p)
        if not 0 <= min_p <= 1:
            raise ConfigError("min_p", f"must be in [0, 1], got {min_p}")
        _set(self, "min_p", min_p)
        _int("min_tokens", self.min_tokens, minimum=0, maximum=self.max_new_tokens)
        _set(self, "stop_token_ids", _token_ids("stop_token_ids", self.stop_token_ids))
        if self.logprobs is not None:
            _int("logprobs", self.logprobs, minimum=0, maximum=MAX_TOP_LOGPROBS)
        if self.grammar is not None and not isinstance(self.grammar, Grammar):
            raise ConfigError("grammar", f"must be a Grammar, got {self.grammar!r}")
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
        nullable = {"top_k", "repetition_penalty", "seed", "logprobs", "grammar"}
        changes = {k: v for k, v in overrides.items() if v is not None or k in nullable}
        for name in ("stop", "stop_token_ids"):
            if isinstance(changes.get(name), list):
                changes[name] = tuple(cast("list[object]", changes[name]))
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
    #: Replay decode steps from CUDA graphs: "auto" and True on a CUDA device, False never.
    cuda_graphs: bool | Literal["auto"] = "auto"

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
        if not (isinstance(self.cuda_graphs, bool) or self.cuda_graphs == "auto"):
            raise ConfigError(
                "cuda_graphs", f'must be True, False or "auto", got {self.cuda_graphs!r}'
            )
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
