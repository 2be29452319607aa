"""Tests of the validated, frozen configuration: defaults, every invalid value, overrides."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatstream.core.config import (
    GREEDY_TEMPERATURE,
    MAX_LOGIT_BIAS,
    MAX_SEED,
    MAX_STOP_LENGTH,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    MAX_TOP_K,
    MAX_TOP_LOGPROBS,
    ChatStreamConfig,
    GenerationParams,
    Grammar,
    MockParams,
    choose_quantize,
)
from chatstream.core.errors import ChatStreamError, ConfigError

HUGE_INT = 10**400  # a valid JSON number that no float can hold

# -- defaults ---------------------------------------------------------------------------------


def test_every_default_of_the_original_constructor() -> None:
    config = ChatStreamConfig()
    assert config.num_of_concurrent_executions == 2
    assert config.max_queue_size == 5
    assert config.too_many_request_as_http_error is False
    assert config.use_mock_response is False
    assert config.mock_params == MockParams(type="round")
    assert config.mock_params.type == "round"
    assert config.max_new_tokens == 256
    assert config.context_len == 1024
    assert config.temperature == 1.0
    assert config.top_k == 50
    assert config.top_p == 1.0
    assert config.repetition_penalty is None
    assert config.repetition_penalty_method == "multiplicative"
    assert config.add_special_tokens is None
    assert config.max_tokens_per_step == 512
    assert config.prompt_budget == 1024 - 256
    assert config.quantize is None
    assert config.cuda_graphs == "auto"


@pytest.mark.parametrize("value", ["on", 1, 0, None, "true"])
def test_cuda_graphs_is_true_false_or_auto(value: Any) -> None:
    for valid in (True, False, "auto"):
        assert ChatStreamConfig(cuda_graphs=valid).cuda_graphs == valid
    with pytest.raises(ConfigError) as raised:
        ChatStreamConfig(cuda_graphs=value)
    assert raised.value.option == "cuda_graphs"


def test_quantize_none_is_spelled_as_none_too() -> None:
    assert ChatStreamConfig(quantize="none").quantize is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("device", "embedded", "int8_kernels", "expected"),
    [
        ("cpu", True, True, "int8"),
        (None, True, True, "int8"),
        ("cpu", False, True, None),  # a model that has not been through the quality gate
        ("cpu", True, False, None),  # kernels that would need 7-bit activations
        ("cuda:0", True, True, None),
    ],
)
def test_auto_quantize_is_int8_only_where_the_gate_was_passed(
    device: str | None, embedded: bool, int8_kernels: bool, expected: str | None
) -> None:
    chosen = choose_quantize(device=device, embedded=embedded, int8_kernels=int8_kernels)
    assert chosen == expected


def test_generation_params_defaults() -> None:
    params = GenerationParams()
    assert params == GenerationParams(
        max_new_tokens=256,
        temperature=1.0,
        top_k=50,
        top_p=1.0,
        repetition_penalty=None,
        repetition_penalty_method="multiplicative",
        seed=None,
        stop=(),
    )
    assert params.greedy is False


def test_mock_params_defaults() -> None:
    mock = MockParams()
    assert (mock.type, mock.initial_wait_sec, mock.time_per_token_sec) == ("round", 0.0, 0.1)


def test_generation_defaults_follow_the_config() -> None:
    config = ChatStreamConfig(
        max_new_tokens=10,
        context_len=20,
        temperature=0.5,
        top_k=None,
        top_p=0.9,
        repetition_penalty=-0.5,
        repetition_penalty_method="subtractive",
    )
    expected = GenerationParams(
        max_new_tokens=10,
        temperature=0.5,
        top_k=None,
        top_p=0.9,
        repetition_penalty=-0.5,
        repetition_penalty_method="subtractive",
    )
    assert config.generation_defaults == expected
    assert config.generation_params() == expected
    assert config.generation_params({}) == expected
    assert config.prompt_budget == 10


# -- valid edge values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_queue_size": 0}, id="no-waiting-room"),
        pytest.param({"num_of_concurrent_executions": 1, "max_tokens_per_step": 2}, id="min-step"),
        pytest.param({"context_len": 257}, id="context-one-more-than-max-new-tokens"),
        pytest.param({"max_new_tokens": 1, "context_len": 2}, id="smallest-context"),
        pytest.param({"temperature": 0}, id="greedy"),
        pytest.param({"top_k": None}, id="top-k-off"),
        pytest.param({"top_k": 1}, id="top-k-1"),
        pytest.param({"top_p": 1}, id="top-p-1"),
        pytest.param({"top_p": 1e-9}, id="top-p-tiny"),
        pytest.param({"repetition_penalty": 1.2}, id="penalty"),
        pytest.param(
            {"repetition_penalty": 0, "repetition_penalty_method": "subtractive"},
            id="subtractive-zero",
        ),
        pytest.param({"add_special_tokens": False}, id="special-tokens-off"),
        pytest.param({"add_special_tokens": True}, id="special-tokens-on"),
        pytest.param({"too_many_request_as_http_error": True}, id="429"),
        pytest.param({"use_mock_response": True}, id="mock"),
        pytest.param({"quantize": "int8"}, id="int8"),
        pytest.param({"quantize": "bf16"}, id="bf16"),
        pytest.param({"quantize": None}, id="weights-as-loaded"),
    ],
)
def test_valid_edge_values_are_accepted(kwargs: dict[str, Any]) -> None:
    config = ChatStreamConfig(**kwargs)
    for name, value in kwargs.items():
        assert getattr(config, name) == value


def test_numbers_are_normalised_to_float() -> None:
    config = ChatStreamConfig(temperature=1, top_p=1, repetition_penalty=2)
    for value in (config.temperature, config.top_p, config.repetition_penalty):
        assert type(value) is float
    mock = MockParams(initial_wait_sec=1, time_per_token_sec=0)
    assert type(mock.initial_wait_sec) is float
    assert type(mock.time_per_token_sec) is float


@pytest.mark.parametrize(
    ("temperature", "greedy"),
    [(0.0, True), (GREEDY_TEMPERATURE / 2, True), (GREEDY_TEMPERATURE, False), (0.7, False)],
)
def test_greedy_below_the_threshold(temperature: float, greedy: bool) -> None:
    assert GenerationParams(temperature=temperature).greedy is greedy


# -- invalid values ---------------------------------------------------------------------------

INVALID_CONFIG: list[Any] = [
    # sizes: zero, negative, bool, float, string
    ({"num_of_concurrent_executions": 0}, "num_of_concurrent_executions"),
    ({"num_of_concurrent_executions": -1}, "num_of_concurrent_executions"),
    ({"num_of_concurrent_executions": True}, "num_of_concurrent_executions"),
    ({"num_of_concurrent_executions": 2.0}, "num_of_concurrent_executions"),
    ({"num_of_concurrent_executions": "2"}, "num_of_concurrent_executions"),
    ({"max_queue_size": -1}, "max_queue_size"),
    ({"max_queue_size": True}, "max_queue_size"),
    ({"max_queue_size": None}, "max_queue_size"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": -5}, "max_new_tokens"),
    ({"max_new_tokens": True}, "max_new_tokens"),
    ({"max_new_tokens": 16.0}, "max_new_tokens"),
    ({"context_len": 1}, "context_len"),
    ({"context_len": 0}, "context_len"),
    ({"context_len": -1024}, "context_len"),
    ({"context_len": True}, "context_len"),
    ({"context_len": "1024"}, "context_len"),
    ({"max_tokens_per_step": 2}, "max_tokens_per_step"),  # needs > 2 concurrent executions
    ({"max_tokens_per_step": 0}, "max_tokens_per_step"),
    ({"max_tokens_per_step": True}, "max_tokens_per_step"),
    # context_len <= max_new_tokens leaves no room for a prompt
    ({"context_len": 256}, "max_new_tokens"),
    ({"context_len": 100}, "max_new_tokens"),
    ({"max_new_tokens": 2048}, "max_new_tokens"),
    # flags
    ({"too_many_request_as_http_error": 1}, "too_many_request_as_http_error"),
    ({"too_many_request_as_http_error": "yes"}, "too_many_request_as_http_error"),
    ({"too_many_request_as_http_error": None}, "too_many_request_as_http_error"),
    ({"use_mock_response": 0}, "use_mock_response"),
    ({"add_special_tokens": 1}, "add_special_tokens"),
    ({"add_special_tokens": "false"}, "add_special_tokens"),
    ({"quantize": "int4"}, "quantize"),
    ({"quantize": "INT8"}, "quantize"),
    ({"quantize": True}, "quantize"),
    # sampling
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": None}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature"),
    ({"temperature": HUGE_INT}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": True}, "top_k"),
    ({"top_k": 1.5}, "top_k"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": -0.5}, "top_p"),
    ({"top_p": 1.0001}, "top_p"),
    ({"top_p": math.nan}, "top_p"),
    ({"top_p": True}, "top_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"repetition_penalty": True}, "repetition_penalty"),
    ({"repetition_penalty": "1.2"}, "repetition_penalty"),
    ({"repetition_penalty": math.inf}, "repetition_penalty"),
    ({"repetition_penalty_method": "additive"}, "repetition_penalty_method"),
    ({"repetition_penalty_method": None}, "repetition_penalty_method"),
    ({"repetition_penalty_method": ["multiplicative"]}, "repetition_penalty_method"),
    # mock params
    ({"mock_params": "round"}, "mock_params"),
    ({"mock_params": None}, "mock_params"),
    ({"mock_params": {"type": "square"}}, "mock_params.type"),
    ({"mock_params": {"speed": 2}}, "mock_params.speed"),
    ({"mock_params": {"initial_wait_sec": -1}}, "mock_params.initial_wait_sec"),
    ({"mock_params": {"time_per_token_sec": "fast"}}, "mock_params.time_per_token_sec"),
]


@pytest.mark.parametrize(
    ("kwargs", "option"),
    INVALID_CONFIG,
    ids=[f"{option}={next(iter(kwargs.values()))!r}"[:60] for kwargs, option in INVALID_CONFIG],
)
def test_invalid_config_names_the_option(kwargs: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ChatStreamConfig(**kwargs)
    assert caught.value.option == option
    assert str(caught.value).startswith(f"{option}: ")
    assert caught.value.status_hint == 400


def test_config_error_is_a_value_error_and_a_chatstream_error() -> None:
    with pytest.raises(ConfigError) as caught:
        ChatStreamConfig(context_len=256)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, ChatStreamError)
    # The message explains the rule, with both numbers.
    assert "context_len (256)" in str(caught.value)
    assert "got 256" in str(caught.value)


def test_the_largest_values_allowed_are_allowed() -> None:
    params = GenerationParams(
        seed=MAX_SEED,
        top_k=MAX_TOP_K,
        stop=tuple("z" * MAX_STOP_LENGTH for _ in range(MAX_STOP_STRINGS)),
    )
    assert params.seed == 2**63 - 1
    assert len(params.stop) == MAX_STOP_STRINGS


def test_huge_integer_is_a_config_error_not_an_overflow() -> None:
    # Regression: float(10**400) raised OverflowError (a 500), not a ConfigError (a 400).
    with pytest.raises(ConfigError, match="too large") as caught:
        GenerationParams().with_overrides({"top_p": HUGE_INT})
    assert caught.value.option == "top_p"


INVALID_GENERATION: list[Any] = [
    ({"seed": -1}, "seed"),
    ({"seed": True}, "seed"),
    ({"seed": 1.5}, "seed"),
    # Past what a generator takes (it raised "Overflow when unpacking long long" in the model
    # thread and failed the whole batch).
    ({"seed": 2**63}, "seed"),
    ({"seed": 18446744073709551616}, "seed"),
    ({"top_k": 2**31}, "top_k"),
    ({"stop": ""}, "stop[0]"),
    ({"stop": [""]}, "stop[0]"),
    ({"stop": ["ok", 1]}, "stop[1]"),
    ({"stop": ["x"] * (MAX_STOP_STRINGS + 1)}, "stop"),
    ({"stop": ["ok", "y" * (MAX_STOP_LENGTH + 1)]}, "stop[1]"),
    ({"stop": 5}, "stop"),
    ({"stop": None}, "stop"),
    ({"stop": {"a": 1}}, "stop"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_p": 2}, "top_p"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -2.01}, "frequency_penalty"),
    ({"frequency_penalty": "1"}, "frequency_penalty"),
    ({"logit_bias": {"x7": 1.0}}, "logit_bias['x7']"),
    ({"logit_bias": {"٧": 1.0}}, "logit_bias['٧']"),
    ({"logit_bias": {7: 101}}, "logit_bias[7]"),
    ({"logit_bias": {7: math.nan}}, "logit_bias[7]"),
    ({"logit_bias": {-1: 1}}, "logit_bias[-1]"),
    ({"logit_bias": dict.fromkeys(range(MAX_LOGIT_BIAS + 1), 1)}, "logit_bias"),
    ({"logit_bias": [(1, 1), (1, 2)]}, "logit_bias"),
    ({"logit_bias": [(1, 2, 3)]}, "logit_bias"),
    ({"logit_bias": 5}, "logit_bias"),
    ({"min_p": 1.5}, "min_p"),
    ({"min_p": -0.1}, "min_p"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"min_tokens": 300}, "min_tokens"),  # more than max_new_tokens (256)
    ({"stop_token_ids": [1, -2]}, "stop_token_ids[1]"),
    ({"stop_token_ids": list(range(MAX_STOP_TOKEN_IDS + 1))}, "stop_token_ids"),
    ({"stop_token_ids": 3}, "stop_token_ids"),
    ({"logprobs": MAX_TOP_LOGPROBS + 1}, "logprobs"),
    ({"logprobs": -1}, "logprobs"),
    ({"grammar": "json"}, "grammar"),
]


def test_the_openai_options_are_normalised() -> None:
    params = GenerationParams(
        presence_penalty=1,
        frequency_penalty=-2,
        logit_bias={9: 1, 3: -100},  # type: ignore[arg-type]  # a mapping is accepted
        min_p=0,
        min_tokens=4,
        stop_token_ids=[7, 8],  # type: ignore[arg-type]  # a list is accepted
        logprobs=20,
    )
    assert params.presence_penalty == 1.0 and isinstance(params.presence_penalty, float)
    assert params.logit_bias == ((3, -100.0), (9, 1.0))
    # A JSON object's keys are strings: digits name a token id.
    assert GenerationParams(logit_bias={"9": 1}).logit_bias == ((9, 1.0),)  # type: ignore[arg-type]
    assert params.stop_token_ids == (7, 8)
    assert hash(params) == hash(params.with_overrides({"stop_token_ids": [7, 8]}))
    assert params.with_overrides({"logprobs": None}).logprobs is None


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"kind": "yaml"}, "grammar.kind"),
        ({"kind": "json_schema"}, "grammar.source"),
        ({"kind": "regex", "source": 3}, "grammar.source"),
        ({"kind": "json_object", "strict": 1}, "grammar.strict"),
    ],
)
def test_invalid_grammars_name_the_option(kwargs: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Grammar(**kwargs)
    assert caught.value.option == option


def test_a_grammar_is_a_generation_option() -> None:
    grammar = Grammar("json_schema", '{"type": "object"}')
    assert GenerationParams(grammar=grammar).grammar == grammar
    assert Grammar("json_object").source == ""


@pytest.mark.parametrize(("kwargs", "option"), INVALID_GENERATION)
def test_invalid_generation_params_name_the_option(kwargs: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        GenerationParams(**kwargs)
    assert caught.value.option == option


def test_stop_accepts_one_string_or_a_list() -> None:
    assert GenerationParams(stop="END").stop == ("END",)  # type: ignore[arg-type]
    words = ["a", "b"]
    params = GenerationParams(stop=words)  # type: ignore[arg-type]  # a JSON list
    assert params.stop == ("a", "b")
    words.append("c")  # the params keep their own copy
    assert params.stop == ("a", "b")


# -- per-request overrides --------------------------------------------------------------------


def test_no_overrides_returns_the_same_params() -> None:
    params = GenerationParams(temperature=0.3)
    assert params.with_overrides(None) is params
    assert params.with_overrides({}) is params


def test_overrides_replace_values_and_leave_the_original_alone() -> None:
    params = GenerationParams()
    changed = params.with_overrides({"temperature": 0, "top_k": 5, "seed": 7, "max_new_tokens": 9})
    assert (changed.temperature, changed.top_k, changed.seed, changed.max_new_tokens) == (
        0.0,
        5,
        7,
        9,
    )
    assert changed.greedy
    assert params == GenerationParams()


def test_unknown_override_names_it() -> None:
    with pytest.raises(ConfigError) as caught:
        GenerationParams().with_overrides({"temprature": 0.5, "top_k": 3})
    assert caught.value.option == "temprature"
    # The message lists the known names so that the typo is easy to spot.
    assert "temperature" in str(caught.value)
    assert "repetition_penalty_method" in str(caught.value)


def test_first_unknown_override_in_sorted_order_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        GenerationParams().with_overrides({"zeta": 1, "alpha": 2})
    assert caught.value.option == "alpha"


def test_none_keeps_the_value() -> None:
    params = GenerationParams(
        max_new_tokens=12,
        temperature=0.4,
        top_p=0.8,
        repetition_penalty_method="subtractive",
        stop=("x",),
    )
    keep = dict.fromkeys(
        ("max_new_tokens", "temperature", "top_p", "repetition_penalty_method", "stop")
    )
    assert params.with_overrides(keep) == params


@pytest.mark.parametrize("name", ["top_k", "repetition_penalty", "seed"])
def test_none_turns_off_top_k_penalty_and_seed(name: str) -> None:
    params = GenerationParams(top_k=5, repetition_penalty=1.3, seed=1)
    changed = params.with_overrides({name: None})
    assert getattr(changed, name) is None
    assert getattr(params, name) is not None


def test_stop_override_list_becomes_a_tuple() -> None:
    assert GenerationParams().with_overrides({"stop": ["a", "b"]}).stop == ("a", "b")


def test_stop_override_single_string() -> None:
    assert GenerationParams().with_overrides({"stop": "\n\n"}).stop == ("\n\n",)


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"temperature": -1}, "temperature"),
        ({"temperature": "0.5"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": False}, "top_k"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty_method": "both"}, "repetition_penalty_method"),
        ({"seed": -3}, "seed"),
        ({"seed": MAX_SEED + 1}, "seed"),
        ({"stop": [""]}, "stop[0]"),
    ],
)
def test_overrides_meet_the_same_checks(overrides: dict[str, object], option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        GenerationParams().with_overrides(overrides)
    assert caught.value.option == option


def test_switching_the_penalty_method_revalidates_the_penalty() -> None:
    params = GenerationParams(repetition_penalty=-1.0, repetition_penalty_method="subtractive")
    with pytest.raises(ConfigError) as caught:
        params.with_overrides({"repetition_penalty_method": "multiplicative"})
    assert caught.value.option == "repetition_penalty"


def test_config_generation_params_applies_overrides() -> None:
    config = ChatStreamConfig(context_len=1024)
    params = config.generation_params({"max_new_tokens": 1023, "temperature": 0.2})
    assert params.max_new_tokens == 1023
    assert params.temperature == 0.2
    assert config.max_new_tokens == 256  # the config itself is unchanged


@pytest.mark.parametrize("max_new_tokens", [1024, 1025, 10**6])
def test_config_generation_params_refuses_max_new_tokens_filling_the_context(
    max_new_tokens: int,
) -> None:
    config = ChatStreamConfig(context_len=1024)
    with pytest.raises(ConfigError) as caught:
        config.generation_params({"max_new_tokens": max_new_tokens})
    assert caught.value.option == "max_new_tokens"


def test_config_generation_params_refuses_unknown_and_invalid() -> None:
    config = ChatStreamConfig()
    with pytest.raises(ConfigError) as caught:
        config.generation_params({"context_len": 4096})  # not a per-request option
    assert caught.value.option == "context_len"
    with pytest.raises(ConfigError) as caught:
        config.generation_params({"top_p": 1.5})
    assert caught.value.option == "top_p"


@given(
    temperature=st.floats(min_value=0, max_value=100),
    top_p=st.floats(min_value=0, max_value=1, exclude_min=True),
    top_k=st.none() | st.integers(min_value=1, max_value=10**6),
    max_new_tokens=st.integers(min_value=1, max_value=1023),
)
def test_valid_overrides_always_pass_and_round_trip(
    temperature: float, top_p: float, top_k: int | None, max_new_tokens: int
) -> None:
    overrides = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "max_new_tokens": max_new_tokens,
    }
    params = ChatStreamConfig().generation_params(overrides)
    assert (params.temperature, params.top_p, params.top_k, params.max_new_tokens) == (
        temperature,
        top_p,
        top_k,
        max_new_tokens,
    )
    assert params.greedy is (temperature < GREEDY_TEMPERATURE)


# -- mock params ------------------------------------------------------------------------------


def test_mock_params_from_mapping() -> None:
    mock = MockParams.from_mapping({"type": "long", "initial_wait_sec": 1, "time_per_token_sec": 0})
    assert mock == MockParams(type="long", initial_wait_sec=1.0, time_per_token_sec=0.0)
    assert MockParams.from_mapping({}) == MockParams()


@pytest.mark.parametrize(
    ("mapping", "option"),
    [
        ({"typ": "round"}, "mock_params.typ"),
        ({"type": "round", "tokens_per_sec": 3}, "mock_params.tokens_per_sec"),
        ({"type": "ROUND"}, "mock_params.type"),
        ({"type": None}, "mock_params.type"),
        ({"initial_wait_sec": -0.5}, "mock_params.initial_wait_sec"),
        ({"time_per_token_sec": -1}, "mock_params.time_per_token_sec"),
        ({"time_per_token_sec": "0.1"}, "mock_params.time_per_token_sec"),
        ({"initial_wait_sec": True}, "mock_params.initial_wait_sec"),
        ({"initial_wait_sec": math.inf}, "mock_params.initial_wait_sec"),
    ],
)
def test_mock_params_invalid(mapping: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MockParams.from_mapping(mapping)
    assert caught.value.option == option


def test_unknown_mock_key_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="initial_wait_sec, time_per_token_sec, type"):
        MockParams.from_mapping({"speed": 1})


def test_config_normalises_a_mock_params_dict() -> None:
    source: dict[str, object] = {"type": "echo"}
    config = ChatStreamConfig(mock_params=source)  # type: ignore[arg-type]  # the original's dict
    assert isinstance(config.mock_params, MockParams)
    assert config.mock_params == MockParams(type="echo")
    source["type"] = "long"  # the config does not keep the caller's dict
    assert config.mock_params.type == "echo"
    assert config == ChatStreamConfig(mock_params=MockParams(type="echo"))


def test_config_accepts_mock_params_object() -> None:
    mock = MockParams(type="long", time_per_token_sec=0.0)
    assert ChatStreamConfig(mock_params=mock).mock_params is mock


# -- frozen, independent instances ------------------------------------------------------------


def test_config_is_frozen() -> None:
    config = ChatStreamConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_queue_size = 100  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mock_params.type = "echo"  # type: ignore[misc]
    params = config.generation_defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.temperature = 0.0  # type: ignore[misc]
    assert config == ChatStreamConfig()


def test_config_has_no_instance_dict() -> None:
    # slots: no stray attribute can be set by a typo either.
    config = ChatStreamConfig()
    assert not hasattr(config, "__dict__")
    with pytest.raises((AttributeError, TypeError)):
        object.__setattr__(config, "max_queue_sise", 3)


def test_instances_share_no_mutable_state() -> None:
    a, b = ChatStreamConfig(), ChatStreamConfig()
    assert a == b
    assert hash(a) == hash(b)
    c = dataclasses.replace(a, max_queue_size=0)
    assert (a.max_queue_size, c.max_queue_size) == (5, 0)
    # Every field value is immutable, so nothing can leak from one instance into another.
    for config in (a, b, c):
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            assert isinstance(value, int | float | str | bool | type(None) | MockParams)
    for f in dataclasses.fields(GenerationParams()):
        assert not isinstance(getattr(GenerationParams(), f.name), list | dict | set)


def test_replace_revalidates() -> None:
    with pytest.raises(ConfigError) as caught:
        dataclasses.replace(ChatStreamConfig(), context_len=10)
    assert caught.value.option == "max_new_tokens"


@pytest.mark.parametrize(
    ("context_len", "max_new_tokens", "budget"),
    [(1024, 256, 768), (2, 1, 1), (4096, 1000, 3096)],
)
def test_prompt_budget(context_len: int, max_new_tokens: int, budget: int) -> None:
    config = ChatStreamConfig(context_len=context_len, max_new_tokens=max_new_tokens)
    assert config.prompt_budget == budget
