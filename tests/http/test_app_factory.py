"""App assembly: API selection as in the original, and callbacks that must not break a stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.testclient import TestClient

from chatstream import ChatStream
from chatstream.adapters.starlette import API_PATHS, create_app, select_apis
from chatstream.core import StepCompleted, StepPlan
from chatstream.core.roles import API_NAMES


def test_selection_is_exactly_one_of_all_include_exclude() -> None:
    assert select_apis(None) == list(API_PATHS)
    assert select_apis({"all": True, "web_ui_params": {"lang": "ja"}}) == list(API_PATHS)
    assert select_apis({"include": ["get_load", "chat_stream"]}) == ["chat_stream", "get_load"]
    assert "chat_stream" not in select_apis({"exclude": ["chat_stream"]})
    for bad in ({}, {"all": True, "include": []}, {"all": False}, {"include": "get_load"}):
        with pytest.raises(ValueError, match=r"exactly one|must be"):
            select_apis(bad)
    with pytest.raises(ValueError, match="unknown API names"):
        select_apis({"include": ["get_load", "get_everything"]})
    assert set(API_PATHS) <= set(API_NAMES)


class FailingBackend:
    """Fails every request at its first token: a model error after the stream started."""

    name = "failing"
    stop_token_ids: frozenset[int] = frozenset({0})
    max_context: int | None = None

    def encode(self, text: str, *, add_special_tokens: bool | None = None) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int], /) -> str:
        return "".join(chr(t) for t in token_ids if t)

    def run_step(self, plan: StepPlan) -> StepCompleted:
        failing = [c.request_id for c in plan.prefill if c.last]
        return StepCompleted(step=plan.step, errors=dict.fromkeys(failing, "model exploded"))

    def close(self) -> None:
        pass


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_model_error_reaches_the_callback_and_the_stream(backend: str) -> None:
    chat_stream = ChatStream(backend=lambda slots: FailingBackend())
    messages: list[str] = []

    def raising_callback(request: Request, message: str) -> None:
        messages.append(message)
        raise RuntimeError("a broken callback must not break the server")

    async def chat(request: Request) -> Any:
        return await chat_stream.handle_chat_stream_request(request, callback=raising_callback)

    app = create_app(chat_stream, secret_key="x", apis={"exclude": ["chat_stream"]})
    app.router.routes.append(Route("/chat_stream", chat, methods=["POST"]))
    with TestClient(app, backend=backend) as client:  # type: ignore[arg-type]
        for _ in range(2):  # the slot is free again after the failure
            response = client.post(
                "/chat_stream", json={"user_input": "hi"}, headers={"Accept": "text/event-stream"}
            )
            assert "event: error" in response.text
            assert "model exploded" in response.text
        original = client.post("/chat_stream", json={"user_input": "hi"})
        assert original.text == "<::ERROR::>model exploded<::EOS::>"
        assert client.get("/get_load").json()["chatstream_workers"][0]["processing"] == 0
    assert messages == ["error", "error", "error"]
    assert isinstance(app, Starlette)


def _finished(chat_stream: ChatStream) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = chat_stream.http_api().metrics.render(chat_stream.statistics())
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "chatstream_requests_total" and sample.labels == {
                "outcome": "finished"
            }:
                return sample.value
    raise AssertionError("no chatstream_requests_total{outcome='finished'}")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_two_chat_streams_in_one_process_keep_their_own_endpoints_and_metrics(
    backend: str,
) -> None:
    quick = {"type": "round", "time_per_token_sec": 0.001}
    first = ChatStream(use_mock_response=True, mock_params=quick)
    second = ChatStream(use_mock_response=True, mock_params=quick)

    async def by_hand(request: Request) -> Any:
        # The original's way: a route of one's own calling the ChatStream's handler.
        return await first.handle_chat_stream_request(request)

    app_one = create_app(first, secret_key="x")
    app_one.router.routes.append(Route("/by_hand", by_hand, methods=["POST"]))
    app_two = create_app(second, secret_key="x")
    with (
        TestClient(app_one, backend=backend) as one,  # type: ignore[arg-type]
        TestClient(app_two, backend=backend) as two,  # type: ignore[arg-type]
    ):
        assert one.post("/chat_stream", json={"user_input": "hi"}).status_code == 200
        assert one.post("/by_hand", json={"user_input": "again"}).status_code == 200
        assert two.get("/health").status_code == 200
        # The app's routes and the handler share the ChatStream's one set of endpoints.
        assert first.http_api() is first.http_api()
        assert first.http_api() is not second.http_api()
        assert _finished(first) == 2
        assert _finished(second) == 0
        assert first.http_api().metrics.registry is not second.http_api().metrics.registry
