"""vLLM's operational routes through the app on both loops: the served model's name and
card (``/v1/models``, ``/v1/models/{id}``, the ``model`` check), ``/tokenize``,
``/detokenize`` and ``/version``, with the official ``openai`` client where it applies."""

from __future__ import annotations

import pathlib
import threading
import tomllib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from starlette.testclient import TestClient

import chatstream
from chatstream import ChatStream
from chatstream.adapters.http.common import HttpOptions
from chatstream.adapters.http.openai_models import unknown_model
from chatstream.adapters.model.mock_backend import MockBackend
from chatstream.adapters.starlette import create_app
from chatstream.core import ConfigError

ROOT = pathlib.Path(__file__).parent.parent.parent
BACKENDS = ["asyncio", "trio"]
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def mock(**options: Any) -> ChatStream:
    return ChatStream(
        use_mock_response=True, mock_params={"time_per_token_sec": 0, "type": "echo"}, **options
    )


@pytest.fixture
def client(backend: str) -> Iterator[TestClient]:
    app = create_app(mock(served_model_name="org/served"), secret_key="test")
    with TestClient(app, backend=backend) as client:  # type: ignore[arg-type]
        yield client


def openai_client(client: TestClient) -> openai.OpenAI:
    # The TestClient is an httpx.Client: the official client runs on the app itself.
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0
    )


def assert_openai_error(response: Any, status: int, param: str | None, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    return str(error["message"])


# ---------------------------------------------------------------------------- the model


def test_the_served_name_is_everywhere(client: TestClient) -> None:
    sdk = openai_client(client)
    assert [m.id for m in sdk.models.list().data] == ["org/served"]
    card = sdk.models.retrieve("org/served")
    assert (card.id, card.object, card.owned_by) == ("org/served", "model", "chatstream")
    assert client.get("/v1/models/org/served").json()["max_model_len"] == 1024
    completion = sdk.chat.completions.create(model="org/served", messages=USER)
    assert completion.model == "org/served"
    chunks = list(sdk.chat.completions.create(model="org/served", messages=USER, stream=True))
    assert {chunk.model for chunk in chunks} == {"org/served"}


def test_an_unknown_model_id_is_a_404_in_openai_shape(client: TestClient) -> None:
    message = assert_openai_error(client.get("/v1/models/mock"), 404, "model", "model_not_found")
    assert message == "The model `mock` does not exist."
    with pytest.raises(openai.NotFoundError):
        openai_client(client).models.retrieve("other")


def test_the_model_check_for_request_handlers() -> None:
    service = mock(served_model_name="served")
    for fine in (None, "", "served"):
        assert unknown_model(service, fine) is None
    refusal = unknown_model(service, "gpt-4o")
    assert refusal is not None and refusal.status_code == 404
    assert b"The model `gpt-4o` does not exist." in refusal.body
    assert b'"model_not_found"' in refusal.body
    long = unknown_model(service, "x" * 10_000)
    assert long is not None and len(long.body) < 1000  # the name is cut short
    not_a_name = unknown_model(service, ["served"])
    assert not_a_name is not None and not_a_name.status_code == 400
    # Without a served name, any name is taken (clients that hardcode one), but a lookup of a
    # card knows only the model's own name.
    assert unknown_model(mock(), "mock") is None
    assert unknown_model(mock(), "gpt-4o") is None
    lookup = unknown_model(mock(), "gpt-4o", lookup=True)
    assert lookup is not None and lookup.status_code == 404


@pytest.mark.parametrize("bad", ["", "  ", 5])
def test_a_served_name_must_be_a_name(bad: Any) -> None:
    with pytest.raises(ConfigError, match="served_model_name"):
        mock(served_model_name=bad)


# ---------------------------------------------------------------------------- tokenize


def test_tokenize_a_prompt_and_detokenize_it_back(client: TestClient) -> None:
    tokenized = client.post("/tokenize", json={"prompt": "héllo"})
    assert tokenized.json() == {
        "tokens": [ord(c) for c in "héllo"],  # the mock's tokens are code points
        "count": 5,
        "max_model_len": 1024,
    }
    back = client.post("/detokenize", json={"tokens": tokenized.json()["tokens"]})
    assert back.json() == {"prompt": "héllo"}
    named = client.post("/tokenize", json={"prompt": "a", "model": "org/served"})
    assert named.json()["count"] == 1


def test_tokenize_messages_as_a_chat_completion_renders_them(client: TestClient) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "be brief"},
        *USER,
    ]
    with_opening = client.post("/tokenize", json={"messages": messages}).json()
    without = client.post(
        "/tokenize", json={"messages": messages, "add_generation_prompt": False}
    ).json()
    text = "".join(chr(t) for t in with_opening["tokens"])
    assert text.endswith("<bot>:") and "hi" in text and "be brief" in text
    assert "".join(chr(t) for t in without["tokens"]) == text.removesuffix("<bot>:")
    # The chat completion of the same messages counts as many prompt tokens.
    completion = openai_client(client).chat.completions.create(
        model="org/served", messages=messages
    )
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == with_opening["count"]
    # Text parts are taken as a chat completion takes them.
    parts = [{"role": "user", "content": [{"type": "text", "text": "h"}, {"text": "i"}]}]
    assert (
        client.post("/tokenize", json={"messages": parts}).json()["tokens"]
        == (client.post("/tokenize", json={"messages": USER}).json()["tokens"])
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": "a", "messages": USER}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
        ({"prompt": "a", "add_special_tokens": "yes"}, "add_special_tokens"),
        ({"messages": USER, "add_generation_prompt": 1}, "add_generation_prompt"),
        ({"tokens": [1]}, "prompt"),
    ],
)
def test_a_bad_tokenize_request_is_a_400_naming_the_field(
    client: TestClient, body: dict[str, Any], param: str
) -> None:
    assert_openai_error(client.post("/tokenize", json=body), 400, param, "invalid_value")


@pytest.mark.parametrize(
    "tokens", [None, "104", [104, "105"], [104, 1.5], [True], [-1], [2**40], [{"id": 1}]]
)
def test_a_bad_detokenize_request_is_a_400_naming_tokens(client: TestClient, tokens: Any) -> None:
    body = {} if tokens is None else {"tokens": tokens}
    assert_openai_error(client.post("/detokenize", json=body), 400, "tokens", "invalid_value")


def test_ids_outside_the_vocabulary_are_named(client: TestClient) -> None:
    vocabulary = MockBackend().vocab_size
    message = assert_openai_error(
        client.post("/detokenize", json={"tokens": [104, vocabulary, -3]}),
        400,
        "tokens",
        "invalid_value",
    )
    assert str(vocabulary) in message and "-3" in message
    # Ids the tokenizer knows but that are no character still make a response.
    assert client.post("/detokenize", json={"tokens": [0xD800]}).status_code == 200


def test_bodies_are_bounded_and_models_checked(backend: str) -> None:
    app = create_app(
        mock(served_model_name="served"),
        http_options=HttpOptions(max_body_bytes=1000, max_json_depth=4),
    )
    with TestClient(app, backend=backend) as client:  # type: ignore[arg-type]
        for path in ("/tokenize", "/detokenize"):
            big = client.post(path, json={"prompt": "x" * 2000, "tokens": [1] * 600})
            assert_openai_error(big, 413, None, "body_too_large")
            deep = client.post(path, json={"tokens": [[[[[1]]]]]})
            assert_openai_error(deep, 400, None, "json_too_deep")
            assert_openai_error(client.post(path, content=b"{"), 400, None, "invalid_json")
            other = client.post(path, json={"prompt": "a", "tokens": [1], "model": "gpt-4o"})
            assert_openai_error(other, 404, "model", "model_not_found")


def test_version(client: TestClient) -> None:
    assert client.get("/version").json() == {"version": chatstream.__version__}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert chatstream.__version__ == pyproject["project"]["version"]


class RecordingBackend(MockBackend):
    """The mock, noting the threads its tokenizer side runs in."""

    threads: ClassVar[list[threading.Thread]] = []

    def encode(self, text: str, *, add_special_tokens: bool | None = None) -> list[int]:
        self.threads.append(threading.current_thread())
        return super().encode(text, add_special_tokens=add_special_tokens)

    def decode(self, token_ids: Sequence[int], /) -> str:
        if len(token_ids) > 100:  # the engine's decodes are of a few ids; ours is long
            self.threads.append(threading.current_thread())
        return super().decode(token_ids)


def test_tokenizing_runs_off_the_event_loop(backend: str) -> None:
    RecordingBackend.threads = []
    service = ChatStream(backend=lambda slots: RecordingBackend())
    app = create_app(service, secret_key="test")
    with TestClient(app, backend=backend) as client:  # type: ignore[arg-type]
        loop_thread = client.portal.call(threading.current_thread)  # type: ignore[union-attr]
        assert client.post("/tokenize", json={"prompt": "abc"}).json()["count"] == 3
        assert client.post("/tokenize", json={"messages": USER}).json()["count"] > 2
        assert client.post("/detokenize", json={"tokens": [97] * 200}).json()["prompt"]
    assert len(RecordingBackend.threads) == 3
    assert loop_thread not in RecordingBackend.threads


# ---------------------------------------------------------------------------- access


def test_the_routes_follow_the_openai_role_and_the_selection(backend: str) -> None:
    roles = {
        "user": {"apis": {"allow": ["chat_stream"], "auth_method": "nothing", "use_session": True}}
    }
    app = create_app(mock(client_roles=roles), secret_key="test")
    with TestClient(app, backend=backend) as client:  # type: ignore[arg-type]
        for method, path in [
            ("GET", "/v1/models/mock"),
            ("POST", "/tokenize"),
            ("POST", "/detokenize"),
            ("GET", "/version"),
        ]:
            refused = client.request(method, path, json={"prompt": "a", "tokens": [1]})
            assert refused.status_code == 403, path
            assert refused.json()["error"]["type"] == "permission_error"
    without = create_app(mock(), secret_key="test", apis={"exclude": ["openai"]})
    with TestClient(without, backend=backend) as client:  # type: ignore[arg-type]
        for path in ("/v1/models/mock", "/tokenize", "/detokenize", "/version"):
            assert client.get(path).status_code == 404, path


def test_before_the_model_runs_tokenizing_is_a_503(backend: str) -> None:
    client = TestClient(create_app(mock()), backend=backend)  # type: ignore[arg-type]
    for path in ("/tokenize", "/detokenize"):
        response = client.post(path, json={"prompt": "a", "tokens": [1]})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
    card = client.get("/v1/models/mock").json()
    assert card["id"] == "mock" and "max_model_len" not in card
