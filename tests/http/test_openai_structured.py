"""Structured output and tool calls through the OpenAI-compatible API, on the tiny random
model: whatever the model's logits, a constrained reply parses and validates, a forced call
names a given function with valid arguments, and LangChain's ``bind_tools`` and
``with_structured_output`` get what they ask for."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.adapters.model.test_grammar import BOUNDED_SCHEMAS, conforms
from tests.http.conftest import Server

from .test_openai_conformance import PROMPT, idle, model_dir, post, refusal, server, tokenizer

__all__ = ["model_dir", "server", "tokenizer"]  # the fixtures, shared with the conformance tests

CITY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 6},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["city", "days"],
}
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city for the next days.",
        "parameters": CITY,
        "strict": True,
    },
}
CLOCK: Any = {"type": "function", "function": {"name": "now", "description": "The time."}}


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def schema_format(schema: dict[str, Any], strict: bool = True) -> Any:
    return {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": schema, "strict": strict},
    }


def test_a_json_schema_reply_parses_and_validates(client: openai.OpenAI) -> None:
    for seed in range(4):
        reply = client.chat.completions.create(
            model="tiny",
            messages=PROMPT,
            max_tokens=60,
            seed=seed,
            response_format=schema_format(CITY),
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "stop", choice
        value = json.loads(choice.message.content or "")
        assert set(value) == {"city", "days"} and 1 <= value["days"] <= 14


def test_a_json_object_reply_starts_as_an_object(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=30, response_format={"type": "json_object"}
    )
    text = reply.choices[0].message.content or ""
    assert text.startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schema=BOUNDED_SCHEMAS)
def test_every_constrained_reply_validates_against_its_schema(
    server: Server, schema: dict[str, Any]
) -> None:
    body = {
        "model": "tiny",
        "messages": PROMPT,
        "max_tokens": 400,
        "temperature": 1.0,
        "n": 2,
        "response_format": schema_format(schema),
    }
    response = post(server, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    for choice in response.json()["choices"]:
        assert choice["finish_reason"] == "stop", choice
        assert conforms(json.loads(choice["message"]["content"]), schema)


def test_constrained_and_free_rows_share_a_batch(client: openai.OpenAI, server: Server) -> None:
    import concurrent.futures

    def free() -> str:
        reply = client.chat.completions.create(
            model="tiny", messages=PROMPT, max_tokens=20, temperature=0
        )
        return str(reply.choices[0].message.content)

    alone = free()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        constrained = [
            pool.submit(
                client.chat.completions.create,
                model="tiny",
                messages=PROMPT,
                max_tokens=60,
                response_format=schema_format(CITY),
            )
            for _ in range(3)
        ]
        beside = pool.submit(free)
        for future in constrained:
            json.loads(future.result().choices[0].message.content or "")
        assert beside.result() == alone
    assert idle(server)


@pytest.mark.parametrize(
    ("response_format", "needle"),
    [
        (schema_format({"type": "object", "not": {"type": "string"}}), "not"),
        (schema_format({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}), "nowhere"),
        (schema_format({"type": "object", "properties": {"a": {"type": "strin"}}}), "strin"),
    ],
)
def test_a_schema_the_engine_cannot_use_is_a_400(
    server: Server, response_format: Any, needle: str
) -> None:
    error = refusal(server, {"messages": PROMPT, "response_format": response_format})
    assert error["param"] == "response_format"
    assert needle in error["message"].lower()
    assert idle(server)


def test_required_tool_choice_makes_a_valid_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny",
        messages=PROMPT,
        max_tokens=200,
        tools=[WEATHER, CLOCK],
        tool_choice="required",
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name in ("get_weather", "now")
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(arguments) == {"city", "days"}
    else:
        assert arguments == {} or isinstance(arguments, dict)


def test_a_named_tool_choice_calls_that_function(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny",
        messages=PROMPT,
        max_tokens=200,
        tools=[CLOCK, WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    (call,) = reply.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city", "days"}


def test_a_forced_call_streams_its_name_then_its_arguments(client: openai.OpenAI) -> None:
    options: dict[str, Any] = {
        "model": "tiny",
        "messages": PROMPT,
        "max_tokens": 200,
        "seed": 3,
        "temperature": 1.0,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    whole = client.chat.completions.create(**options)
    deltas: list[Any] = []
    finish = None
    for chunk in client.chat.completions.create(stream=True, **options):
        for choice in chunk.choices:
            deltas += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    first, *rest = deltas
    assert first.id and first.function is not None and first.function.name == "get_weather"
    assert all(d.id is None and d.function is not None and d.function.name is None for d in rest)
    streamed = "".join((d.function.arguments or "") for d in deltas if d.function is not None)
    (call,) = whole.choices[0].message.tool_calls or []
    assert json.loads(streamed) == json.loads(call.function.arguments)
    assert len(rest) > 1, "the arguments come in pieces"


def test_auto_tool_choice_on_a_model_that_answers_in_prose(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=10, temperature=0, tools=[WEATHER]
    )
    choice = reply.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_tool_choice_none_ignores_the_tools(client: openai.OpenAI, server: Server) -> None:
    with_none = client.chat.completions.create(
        model="tiny",
        messages=PROMPT,
        max_tokens=8,
        temperature=0,
        tools=[WEATHER],
        tool_choice="none",
    )
    without = client.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=8, temperature=0
    )
    assert with_none.choices[0].message.content == without.choices[0].message.content
    assert with_none.usage == without.usage


# ---------------------------------------------------------------------- LangChain


class Forecast(BaseModel):
    """A weather forecast."""

    city: str = Field(max_length=6)
    days: int = Field(ge=1, le=14)


class WeatherQuery(BaseModel):
    """Where and for how long."""

    city: str = Field(max_length=6)
    days: int = Field(ge=1, le=14)


@tool(args_schema=WeatherQuery)
def get_weather(city: str, days: int) -> str:
    """The weather in a city for the next days."""
    return f"sunny in {city} for {days} days"


def chat_model(server: Server) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{server.base_url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        model="tiny",
        temperature=0.7,
        max_tokens=200,  # type: ignore[call-arg]
        max_retries=0,
    )


def test_langchain_bind_tools_gets_tool_calls_and_takes_the_results_back(server: Server) -> None:
    model = chat_model(server).bind_tools([get_weather], tool_choice="get_weather", strict=True)
    question = HumanMessage("What is the weather in Kyoto?")
    answer = model.invoke([question])
    assert isinstance(answer, AIMessage)
    (call,) = answer.tool_calls
    assert call["name"] == "get_weather" and set(call["args"]) == {"city", "days"}
    result = ToolMessage(str(get_weather.invoke(call["args"])), tool_call_id=call["id"])
    follow_up = chat_model(server).invoke([question, answer, result])
    assert isinstance(follow_up, AIMessage) and isinstance(follow_up.content, str)


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_langchain_with_structured_output(
    server: Server, method: Literal["function_calling", "json_schema"]
) -> None:
    model = chat_model(server)
    structured = model.with_structured_output(Forecast, method=method, strict=True)
    forecast = structured.invoke("The forecast for Kyoto, please.")
    assert isinstance(forecast, Forecast)
    assert 1 <= forecast.days <= 14


def test_the_api_refuses_tools_it_cannot_constrain(server: Server) -> None:
    function = {"name": "bad", "parameters": {"type": "object", "not": {}}}
    bad = {"type": "function", "function": function}
    error = refusal(server, {"messages": PROMPT, "tools": [bad], "tool_choice": "required"})
    assert error["param"] == "tools"
    duplicate = refusal(server, {"messages": PROMPT, "tools": [WEATHER, WEATHER]})
    assert duplicate["param"] == "tools"
    assert httpx.get(f"{server.base_url}/health").status_code == 200
