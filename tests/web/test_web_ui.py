"""The bundled web UI, end to end: Debian's headless Chromium (driven by Playwright) against a
real server process with the mock backend.

Screenshots land in tests/web/screenshots/ (and in ``$CHATSTREAM_SCREENSHOT_DIR`` when set).
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable
from typing import Any

import pytest

from chatstream.adapters.model.mock_texts import LONG_EN, ROUND_EN, ROUND_JA
from tests.http.conftest import Server

from .conftest import CHROMIUM, PageFactory, wait_idle

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"
)
pytest.importorskip("playwright.sync_api", reason="the web UI tests need `pip install playwright`")

from playwright.sync_api import Dialog, Page, Route, expect  # noqa: E402

Screenshot = Callable[[Page, str], pathlib.Path]

LAST_REPLY_TEXT = "#messages > .msg.assistant:last-child .text"


# ---------------------------------------------------------------------- helpers


def send(page: Page, text: str) -> None:
    """Type a message and press Enter, as a person would."""
    page.locator("#input").fill(text)
    page.locator("#input").press("Enter")


def last_reply(page: Page) -> Any:
    return page.locator("#messages > .msg.assistant").last


def wait_replies(page: Page, count: int) -> None:
    """Wait until ``count`` replies are complete and the page is idle again."""
    expect(page.locator("#messages > .msg.assistant[data-status=complete]")).to_have_count(count)
    expect(page.locator("body")).to_have_attribute("data-state", "idle")


def reply_longer_than(page: Page, length: int) -> str:
    """Wait until the last reply's text (its markdown source) is longer than ``length``; return
    the text seen then."""
    handle = page.wait_for_function(
        """([selector, length]) => {
            const source = document.querySelector(selector)?.dataset.source || "";
            return source.length > length ? source : false;
        }""",
        arg=[LAST_REPLY_TEXT, length],
    )
    return str(handle.json_value())


def reply_source(reply: Any) -> str:
    """The text of a reply as the model wrote it (markdown), kept beside its rendering."""
    return str(reply.locator(".text").get_attribute("data-source"))


def expect_reply_text(reply: Any, text: str) -> None:
    """The reply's source is ``text``, and the page shows it (the mock's "1. ..." lines render
    as ordered lists; their items read as the line without its number)."""
    expect(reply.locator(".text")).to_have_attribute("data-source", text)
    number, _, item = text.partition(". ")
    if number.isdigit():
        expect(reply.locator(".text > ol > li")).to_have_text(item)
        assert reply.locator(".text > ol").evaluate("ol => ol.start") == int(number)
    else:
        expect(reply.locator(".text")).to_have_text(text)


def server_history(page: Page) -> list[dict[str, Any]] | None:
    """The session's messages from ``GET get_history``, or None where the server lacks it."""
    response = page.request.get("get_history")
    if response.status == 404:
        return None
    assert response.status == 200
    body = response.json()
    assert body["success"] is True
    return list(body["messages"])


def with_conversation(page: Page, body: dict[str, Any]) -> dict[str, Any]:
    """A chat call's body as the page sends it: naming the conversation it shows, if any."""
    conversation = page.get_attribute("body", "data-conversation")
    return {**body, "conversation_id": conversation} if conversation else body


def sse(*events: tuple[str, dict[str, Any]]) -> str:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


# ---------------------------------------------------------------------- streaming


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_streamed_reply_appears_progressively(
    loop: str, request: pytest.FixtureRequest, open_page: PageFactory
) -> None:
    server: Server = request.getfixturevalue(f"{loop}_server")
    page = open_page(server)
    send(page, "Hello there")
    expect(page.locator("#messages > .msg.user .text")).to_have_text("Hello there")
    expect(page.locator("#stop")).to_be_visible()
    expect(page.locator("#send")).to_be_hidden()
    # Two observations of the same reply while it streams: the text grows.
    first = reply_longer_than(page, 0)
    second = reply_longer_than(page, len(first))
    full = ROUND_EN[0]
    assert full.startswith(first) and len(first) < len(full)
    assert full.startswith(second) and len(second) > len(first)
    wait_replies(page, 1)
    reply = last_reply(page)
    expect_reply_text(reply, full)
    assert len(reply.get_attribute("data-message-id") or "") == 32
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#input")).to_be_focused()


def test_each_reply_shows_its_speed_and_what_the_cache_served(
    asyncio_server: Server, open_page: PageFactory
) -> None:
    line = re.compile(
        r"^\d+\.\d\d s to first token · \d+\.\d tokens/s(?: · (\d+) tokens? from cache)?$"
    )

    def cached() -> int:
        stats = last_reply(page).locator(".stats")
        expect(stats).to_have_text(line)
        match = line.match(stats.text_content() or "")
        assert match is not None
        return int(match.group(1) or 0)

    page = open_page(asyncio_server)
    send(page, "Hello there")
    wait_replies(page, 1)
    first = cached()  # the system prompt may be cached already, from other conversations
    # The second turn's prompt starts with the first turn, whose KV the slot kept.
    send(page, "And then?")
    wait_replies(page, 2)
    assert cached() > first


def test_enter_sends_and_shift_enter_adds_a_newline(
    asyncio_server: Server, open_page: PageFactory
) -> None:
    page = open_page(asyncio_server)
    box = page.get_by_role("textbox", name="Message")
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    box.press("Enter")  # nothing to send
    box.press_sequentially("line one")
    box.press("Shift+Enter")
    box.press_sequentially("line two")
    expect(box).to_have_value("line one\nline two")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    # The Enter that confirms an IME conversion (Japanese input) does not send either.
    prevented = page.evaluate(
        """() => {
            const event = new KeyboardEvent("keydown", {
                key: "Enter", code: "Enter", isComposing: true, bubbles: true, cancelable: true,
            });
            document.getElementById("input").dispatchEvent(event);
            return event.defaultPrevented;
        }"""
    )
    assert prevented is False
    expect(page.locator("#messages > .msg")).to_have_count(0)
    box.press("Enter")
    expect(box).to_have_value("")
    user = page.locator("#messages > .msg.user .text")
    expect(user).to_have_count(1)
    assert user.text_content() == "line one\nline two"
    wait_replies(page, 1)


def test_stop_keeps_the_partial_reply(
    busy_server: Server, open_page: PageFactory, screenshot: Screenshot
) -> None:
    page = open_page(busy_server)
    send(page, "Tell me a long story")
    seen = reply_longer_than(page, 30)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("body")).to_have_attribute("data-state", "idle")
    reply = page.locator("#messages > .msg.assistant").first
    expect(reply).to_have_attribute("data-status", "cancelled")
    expect(reply.locator(".note")).to_have_text("Stopped")
    stopped = reply_source(reply)
    assert stopped.startswith(seen) and len(stopped) < len(LONG_EN)
    page.wait_for_timeout(300)
    assert reply_source(reply) == stopped  # nothing more arrives
    screenshot(page, "stopped")
    wait_idle(busy_server)  # the server cancelled the turn and freed the slot
    history = server_history(page)
    if history is not None:
        assert history[-1]["status"] == "cancelled"
        assert history[-1]["content"].startswith(stopped)
    # A new message works after a stop.
    send(page, "Another one, please")
    expect(page.locator("#messages > .msg.user")).to_have_count(2)
    reply_longer_than(page, 0)
    expect(page.locator("#messages > .msg.assistant")).to_have_count(2)
    page.keyboard.press("Escape")  # Escape in the composer stops too
    expect(last_reply(page)).to_have_attribute("data-status", "cancelled")
    first = page.locator("#messages > .msg.assistant").first
    expect(first.locator(".text")).to_have_attribute("data-source", stopped)
    wait_idle(busy_server)


def test_regenerate_replaces_the_last_reply(asyncio_server: Server, open_page: PageFactory) -> None:
    page = open_page(asyncio_server)
    send(page, "Hi")
    wait_replies(page, 1)
    old_id = last_reply(page).get_attribute("data-message-id")
    assert old_id
    with page.expect_request("**/chat_stream") as request:
        last_reply(page).get_by_role("button", name="Regenerate").click()
    assert request.value.post_data_json == with_conversation(page, {"regenerate": True})
    expect(last_reply(page)).not_to_have_attribute("data-message-id", old_id)
    wait_replies(page, 1)
    expect(page.locator("#messages > .msg.assistant")).to_have_count(1)
    expect(page.locator("#messages > .msg.user")).to_have_count(1)
    expect_reply_text(last_reply(page), ROUND_EN[0])
    new_id = last_reply(page).get_attribute("data-message-id")
    history = server_history(page)
    if history is not None:
        assert [m["id"] for m in history if m["role"] == "assistant"] == [new_id]


def test_clear_empties_the_chat_and_the_server_history(
    asyncio_server: Server, open_page: PageFactory
) -> None:
    page = open_page(asyncio_server)
    send(page, "Remember this")
    wait_replies(page, 1)
    with page.expect_response("**/clear_context") as response:
        page.get_by_role("button", name="Clear chat").click()
    assert response.value.status == 200
    expect(page.locator("#messages > .msg")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    page.reload()
    page.wait_for_selector("body[data-history]", state="attached")
    expect(page.locator("#messages > .msg")).to_have_count(0)
    assert server_history(page) in ([], None)
    # The next turn is the first of a new conversation.
    send(page, "Hello again")
    wait_replies(page, 1)
    expect_reply_text(last_reply(page), ROUND_EN[0])


def test_like_and_dislike_send_feedback(
    asyncio_server: Server, open_page: PageFactory, screenshot: Screenshot
) -> None:
    page = open_page(asyncio_server)
    send(page, "Hello! Tell me a story.")
    wait_replies(page, 1)
    send(page, "Go on,\nplease")
    wait_replies(page, 2)
    reply = page.locator("#messages > .msg.assistant").first
    message_id = reply.get_attribute("data-message-id")
    like = reply.get_by_role("button", name="Good reply")
    dislike = reply.get_by_role("button", name="Bad reply")
    for button, is_like in ((like, True), (dislike, False)):
        with page.expect_response("**/set_feedback") as response:
            button.click()
        assert response.value.status == 200
        assert response.value.json()["success"] is True
        assert response.value.request.post_data_json == with_conversation(
            page, {"message_id": message_id, "is_like": is_like, "form_data": ""}
        )
        expect(like).to_have_attribute("aria-pressed", str(is_like).lower())
        expect(dislike).to_have_attribute("aria-pressed", str(not is_like).lower())
    # By keyboard: the focus stays on the button.
    like.focus()
    with page.expect_response("**/set_feedback"):
        page.keyboard.press("Enter")
    expect(like).to_have_attribute("aria-pressed", "true")
    expect(like).to_be_focused()
    page.mouse.move(0, 0)
    screenshot(page, "desktop")
    history = server_history(page)
    if history is not None:
        assert history[1]["id"] == message_id
        assert history[1]["feedback"]["is_like"] is True


def test_queue_position_is_shown_while_waiting(
    busy_server: Server, open_page: PageFactory, screenshot: Screenshot
) -> None:
    occupier = open_page(busy_server)
    send(occupier, "Tell me a long story")
    reply_longer_than(occupier, 0)  # it holds the only slot
    page = open_page(busy_server)
    send(page, "Me too, please")
    expect(page.locator("#messages > .msg.assistant .pending-label")).to_have_text(
        "You are 1st in line"
    )
    expect(last_reply(page)).to_have_attribute("data-status", "pending")
    screenshot(page, "queue")
    page.get_by_role("button", name="Stop").click()  # leave the line
    expect(page.locator("body")).to_have_attribute("data-state", "idle")
    expect(last_reply(page)).to_have_attribute("data-status", "cancelled")
    occupier.get_by_role("button", name="Stop").click()
    wait_idle(busy_server)


def test_a_429_is_shown_as_busy(
    busy_server: Server, open_page: PageFactory, screenshot: Screenshot
) -> None:
    occupier = open_page(busy_server)
    send(occupier, "Tell me a long story")
    reply_longer_than(occupier, 0)
    waiter = open_page(busy_server, locale="ja-JP")
    send(waiter, "私も")
    expect(waiter.locator(".pending-label")).to_have_text("待ち順: 1番目")
    page = open_page(busy_server)
    with page.expect_response("**/chat_stream") as response:
        send(page, "Hello?")
    assert response.value.status == 429
    notice = page.locator("#notice")
    expect(notice).to_be_visible()
    expect(notice).to_have_attribute("data-kind", "busy")
    expect(notice).to_contain_text("The server is busy right now")
    # The refused message is not in the chat; its text is back in the composer.
    expect(page.locator("#messages > .msg")).to_have_count(0)
    expect(page.locator("#input")).to_have_value("Hello?")
    expect(page.locator("body")).to_have_attribute("data-state", "idle")
    screenshot(page, "busy")
    waiter.get_by_role("button", name="停止").click()
    occupier.get_by_role("button", name="Stop").click()
    wait_idle(busy_server)
    # Once there is room, "Try again" sends it.
    page.get_by_role("button", name="Try again").click()
    expect(notice).to_be_hidden()
    reply_longer_than(page, 0)
    page.get_by_role("button", name="Stop").click()
    wait_idle(busy_server)


def test_errors_are_shown_readably(
    asyncio_server: Server, open_page: PageFactory, screenshot: Screenshot
) -> None:
    page = open_page(asyncio_server)
    notice = page.locator("#notice")

    # The original's rejection: 200 with {"error": "too_many_requests"}.
    def original_busy(route: Route) -> None:
        route.fulfill(status=200, json={"error": "too_many_requests"})

    page.route("**/chat_stream", original_busy)
    send(page, "First")
    expect(notice).to_have_attribute("data-kind", "busy")
    expect(notice).to_contain_text("busy")
    expect(page.locator("#input")).to_have_value("First")
    page.unroute("**/chat_stream")

    # An error event after part of the reply.
    def failing(route: Route) -> None:
        body = sse(
            ("started", {"message_id": "m1"}),
            ("delta", {"text": "Half a rep"}),
            ("error", {"message": "the model failed"}),
        )
        route.fulfill(status=200, content_type="text/event-stream", body=body)

    page.route("**/chat_stream", failing)
    send(page, "Second")
    expect(notice).to_have_attribute("data-kind", "error")
    expect(notice).to_contain_text("the model failed")
    expect(last_reply(page)).to_have_attribute("data-status", "error")
    expect(last_reply(page).locator(".text")).to_have_text("Half a rep")
    expect(last_reply(page).locator(".note")).to_have_text("The reply failed.")
    screenshot(page, "error")
    page.unroute("**/chat_stream")

    # Another refusal: the server's sentence is shown.
    def too_long(route: Route) -> None:
        route.fulfill(
            status=400,
            json={"success": False, "error": "user_input_too_long", "message": "too long!"},
        )

    page.route("**/chat_stream", too_long)
    send(page, "Third")
    expect(notice).to_contain_text("Something went wrong: too long!")
    page.unroute("**/chat_stream")

    # The network is gone.
    page.route("**/chat_stream", lambda route: route.abort("connectionrefused"))
    send(page, "Fourth")
    expect(notice).to_contain_text("Could not reach the server")
    expect(page.locator("#input")).to_have_value("Fourth")
    expect(page.locator("#messages > .msg.user")).to_have_count(1)
    page.get_by_role("button", name="Dismiss").click()
    expect(notice).to_be_hidden()
    page.unroute("**/chat_stream")

    # A pass phrase that grants a role: a notice, and the phrase does not stay on screen.
    def role(route: Route) -> None:
        body = sse(
            ("role", {"role": "developer", "dev_tool": True}),
            ("done", {"message_id": None, "finish_reason": "role_granted"}),
        )
        route.fulfill(status=200, content_type="text/event-stream", body=body)

    page.route("**/chat_stream", role)
    send(page, "open sesame")
    expect(notice).to_have_attribute("data-kind", "info")
    expect(notice).to_contain_text("Role granted: developer")
    expect(page.locator("#messages > .msg.user")).to_have_count(1)
    expect(page.locator("#messages")).not_to_contain_text("open sesame")


def test_user_and_model_text_are_not_html(asyncio_server: Server, open_page: PageFactory) -> None:
    page = open_page(asyncio_server)
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    attack = "<img src=x onerror=alert(1)>"
    send(page, attack)
    wait_replies(page, 1)
    expect(page.locator("#messages > .msg.user .text")).to_have_text(attack)
    assert page.locator("#messages img").count() == 0

    model_attack = "<b>bold</b><script>alert(2)</script><img src=y onerror=alert(3)>"

    def model(route: Route) -> None:
        body = sse(
            ("started", {"message_id": "fake"}),
            ("delta", {"text": model_attack[:20]}),
            ("delta", {"text": model_attack[20:]}),
            ("done", {"message_id": "fake", "finish_reason": "stop", "usage": {}}),
        )
        route.fulfill(status=200, content_type="text/event-stream", body=body)

    page.route("**/chat_stream", model)
    send(page, "and you?")
    wait_replies(page, 2)
    expect(last_reply(page).locator(".text")).to_have_text(model_attack)
    expect(last_reply(page).locator(".text")).to_have_attribute("data-source", model_attack)
    assert page.locator("#messages img, #messages script, #messages b").count() == 0
    page.unroute("**/chat_stream")
    # The history shown after a reload is text too.
    page.reload()
    page.wait_for_selector("body[data-history]", state="attached")
    if page.get_attribute("body", "data-history") == "loaded":
        expect(page.locator("#messages > .msg.user .text").first).to_have_text(attack)
    assert page.locator("#messages img").count() == 0
    page.wait_for_timeout(100)
    assert dialogs == []


def test_history_is_kept_across_reloads(asyncio_server: Server, open_page: PageFactory) -> None:
    page = open_page(asyncio_server)
    send(page, "First question")
    wait_replies(page, 1)
    last_reply(page).get_by_role("button", name="Good reply").click()
    expect(last_reply(page).get_by_role("button", name="Good reply")).to_have_attribute(
        "aria-pressed", "true"
    )
    send(page, "Second\nquestion")
    wait_replies(page, 2)
    shown = page.eval_on_selector_all(
        "#messages > .msg",
        "nodes => nodes.map(n => [n.dataset.role, n.querySelector('.text').dataset.source])",
    )
    reply_ids = page.eval_on_selector_all(
        "#messages > .msg.assistant", "nodes => nodes.map(n => n.dataset.messageId)"
    )
    page.reload()
    page.wait_for_selector("body[data-history]", state="attached")
    if server_history(page) is None:
        pytest.skip("GET /get_history is missing (404): the page cannot show the history yet")
    expect(page.locator("body")).to_have_attribute("data-history", "loaded")
    assert page.eval_on_selector_all(
        "#messages > .msg",
        "nodes => nodes.map(n => [n.dataset.role, n.querySelector('.text').dataset.source])",
    ) == [
        ["user", "First question"],
        ["assistant", ROUND_EN[0]],
        ["user", "Second\nquestion"],
        ["assistant", ROUND_EN[1]],
    ]
    assert shown == page.eval_on_selector_all(
        "#messages > .msg",
        "nodes => nodes.map(n => [n.dataset.role, n.querySelector('.text').dataset.source])",
    )
    assert reply_ids == page.eval_on_selector_all(
        "#messages > .msg.assistant", "nodes => nodes.map(n => n.dataset.messageId)"
    )
    first = page.locator("#messages > .msg.assistant").first
    expect(first.get_by_role("button", name="Good reply")).to_have_attribute("aria-pressed", "true")
    expect(last_reply(page).get_by_role("button", name="Regenerate")).to_be_visible()
    expect(first.get_by_role("button", name="Regenerate")).to_have_count(0)
    # The conversation goes on where it was: the third turn gets the third line.
    send(page, "Third")
    wait_replies(page, 3)
    expect_reply_text(last_reply(page), ROUND_EN[2])


# ---------------------------------------------------------------------- language, phone


def test_japanese_ui(
    trio_server: Server,
    asyncio_server: Server,
    open_page: PageFactory,
    screenshot: Screenshot,
) -> None:
    # opts.lang = "ja" from the server's init params wins over an English browser...
    forced = open_page(trio_server, locale="en-US")
    # ...and a Japanese browser gets Japanese without it.
    browser_ja = open_page(asyncio_server, locale="ja-JP")
    for page in (forced, browser_ja):
        expect(page.locator("html")).to_have_attribute("lang", "ja")
        expect(page.get_by_role("textbox", name="メッセージ")).to_have_attribute(
            "placeholder", "メッセージを入力…"
        )
        expect(page.get_by_role("button", name="送信")).to_be_visible()
        expect(page.get_by_role("button", name="会話をクリア")).to_be_visible()
        expect(page.locator(".hint")).to_have_text("Enterで送信、Shift+Enterで改行")
    expect(forced.locator("#title")).to_have_text("チャット")
    expect(forced).to_have_title("チャット")
    send(browser_ja, "こんにちは")
    wait_replies(browser_ja, 1)
    expect_reply_text(last_reply(browser_ja), ROUND_JA[0])
    expect(last_reply(browser_ja).get_by_role("button", name="良い回答")).to_be_visible()
    expect(last_reply(browser_ja).get_by_role("button", name="再生成")).to_be_visible()
    browser_ja.mouse.move(0, 0)
    screenshot(browser_ja, "japanese")


#: A phone's screen, in CSS pixels.
PHONE_WIDTH, PHONE_HEIGHT = 375, 740


def open_phone(open_page: PageFactory, server: Server) -> Page:
    """The page on a phone-sized touch screen."""
    return open_page(
        server,
        viewport={"width": PHONE_WIDTH, "height": PHONE_HEIGHT},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
    )


def test_phone_sized_screen(
    asyncio_server: Server, open_page: PageFactory, screenshot: Screenshot
) -> None:
    width, height = PHONE_WIDTH, PHONE_HEIGHT
    page = open_phone(open_page, asyncio_server)
    composer = page.locator("#composer")
    expect(composer).to_be_in_viewport(ratio=1)
    screenshot(page, "phone-empty")
    page.locator("#input").fill("A long word: " + "x" * 120 + "\n" + "and a line\n" * 12)
    page.get_by_role("button", name="Send").tap()
    wait_replies(page, 1)
    page.locator("#input").fill("What happened next?")
    page.get_by_role("button", name="Send").tap()
    wait_replies(page, 2)
    # The latest reply was scrolled into view; the composer stayed on screen.
    expect(last_reply(page)).to_be_in_viewport()
    expect(composer).to_be_in_viewport(ratio=1)
    box = composer.bounding_box()
    assert box is not None
    assert box["x"] >= 0 and box["x"] + box["width"] <= width
    assert box["y"] + box["height"] <= height
    # Nothing is wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    screenshot(page, "phone")


def test_works_mounted_under_a_prefix(mounted_server: Server, open_page: PageFactory) -> None:
    paths: list[str] = []
    page = open_page(mounted_server, path="/chat/")
    page.on("request", lambda request: paths.append(request.url.split("/", 3)[3]))
    send(page, "Hello from under /chat")
    wait_replies(page, 1)
    last_reply(page).get_by_role("button", name="Good reply").click()
    expect(last_reply(page).get_by_role("button", name="Good reply")).to_have_attribute(
        "aria-pressed", "true"
    )
    page.reload()
    page.wait_for_selector("body[data-history]", state="attached")
    page.get_by_role("button", name="Clear chat").click()
    expect(page.locator("#messages > .msg")).to_have_count(0)
    assert {"chat/chat_stream", "chat/set_feedback", "chat/chatstream.js"} <= set(paths)
    assert "chat/clear_context" in paths
    assert all(path.startswith("chat/") for path in paths), paths
