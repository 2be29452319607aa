"""Several conversations in the web UI: the sidebar lists them (most recently used first, by
title), New chat starts one with its own history, a click switches, rename and delete go to
the server, and on a phone the list hides behind a toggle."""

from __future__ import annotations

from typing import Any

import pytest

from chatstream.adapters.model.mock_texts import ROUND_EN
from tests.http.conftest import Server

from .conftest import CHROMIUM, PageFactory, wait_idle

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"
)
pytest.importorskip("playwright.sync_api", reason="the web UI tests need `pip install playwright`")

from playwright.sync_api import Dialog, Page, expect  # noqa: E402

from .test_web_ui import (  # noqa: E402
    PHONE_HEIGHT,
    PHONE_WIDTH,
    Screenshot,
    expect_reply_text,
    last_reply,
    open_phone,
    reply_longer_than,
    send,
    wait_replies,
)

ITEMS = "#conversations > li"
CURRENT = "#conversations [aria-current=true]"


def shown(page: Page) -> list[list[str]]:
    """The messages on the page: [role, text] each."""
    result: list[list[str]] = page.eval_on_selector_all(
        "#messages > .msg",
        "nodes => nodes.map(n => [n.dataset.role, n.querySelector('.text').dataset.source])",
    )
    return result


def listed(page: Page) -> dict[str, Any]:
    """``GET /conversations`` in the page's session."""
    response = page.request.get("conversations")
    assert response.status == 200, response.text()
    body: dict[str, Any] = response.json()
    assert body["success"] is True
    return body


def titles(page: Page) -> list[str]:
    return [str(c["title"]) for c in listed(page)["conversations"]]


def history_of(page: Page, conversation_id: str) -> list[list[str]]:
    response = page.request.get(f"get_history?conversation_id={conversation_id}")
    assert response.status == 200
    return [[m["role"], m["content"]] for m in response.json()["messages"]]


def item(page: Page, title: str) -> Any:
    return page.locator(ITEMS).filter(has_text=title)


def shown_id(page: Page) -> str:
    value = page.get_attribute("body", "data-conversation")
    assert value
    return value


def new_chat(page: Page) -> None:
    before = page.get_attribute("body", "data-conversation")
    page.locator("#new-chat").click()
    expect(page.locator("body")).not_to_have_attribute("data-conversation", before or "")
    expect(page.locator("#messages > .msg")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()


def chat(page: Page, text: str, replies: int = 1) -> None:
    send(page, text)
    wait_replies(page, replies)
    # The list is read again after the turn: its title shows.
    expect(page.locator(CURRENT)).to_have_text(text.splitlines()[0])


def test_new_chat_has_its_own_history_and_switching_back_shows_the_first(
    asyncio_server: Server, open_page: PageFactory
) -> None:
    page = open_page(asyncio_server)
    expect(page.get_by_role("navigation", name="Conversations")).to_be_visible()
    chat(page, "First chat")
    first = shown_id(page)
    expect(page.locator(ITEMS)).to_have_count(1)

    with page.expect_response("**/conversations") as created:
        new_chat(page)
    assert created.value.request.method == "POST"
    second = shown_id(page)
    assert second != first
    expect(page.locator(CURRENT)).to_have_text("Untitled chat")
    # Empty already: New chat does not make a second empty one.
    page.locator("#new-chat").click()
    expect(page.locator("#input")).to_be_focused()
    assert len(listed(page)["conversations"]) == 2
    expect(page.locator(ITEMS)).to_have_count(2)
    with page.expect_request("**/chat_stream") as turn:
        send(page, "Second chat")
    assert turn.value.post_data_json == {"user_input": "Second chat", "conversation_id": second}
    wait_replies(page, 1)
    # Its own history: the mock's first line again, for its first turn.
    assert shown(page) == [["user", "Second chat"], ["assistant", ROUND_EN[0]]]
    expect(page.locator(CURRENT)).to_have_text("Second chat")
    expect(page.locator(ITEMS)).to_have_text(["Second chat", "First chat"])
    assert titles(page) == ["Second chat", "First chat"]
    assert history_of(page, first) == [["user", "First chat"], ["assistant", ROUND_EN[0]]]

    # Back to the first: its history, and the next turn goes on there.
    with page.expect_request("**/select") as selected:
        item(page, "First chat").get_by_role("button", name="First chat").click()
    assert selected.value.url.endswith(f"/conversations/{first}/select")
    expect(page.locator(CURRENT)).to_have_text("First chat")
    expect(page.locator("#messages > .msg")).to_have_count(2)
    assert shown(page) == [["user", "First chat"], ["assistant", ROUND_EN[0]]]
    assert listed(page)["current"] == first
    with page.expect_request("**/chat_stream") as turn:
        send(page, "And then?")
    assert turn.value.post_data_json == {"user_input": "And then?", "conversation_id": first}
    wait_replies(page, 2)
    expect_reply_text(last_reply(page), ROUND_EN[1])
    expect(page.locator(ITEMS)).to_have_text(["First chat", "Second chat"])
    assert history_of(page, second) == [["user", "Second chat"], ["assistant", ROUND_EN[0]]]


def test_rename_persists_across_reload(asyncio_server: Server, open_page: PageFactory) -> None:
    page = open_page(asyncio_server)
    chat(page, "Plan a trip\nto Kyoto")
    conversation = shown_id(page)
    entry = item(page, "Plan a trip")
    entry.get_by_role("button", name="Rename").click()
    field = page.get_by_role("textbox", name="Title")
    expect(field).to_be_focused()
    expect(field).to_have_value("Plan a trip")
    field.fill("Holiday")
    with page.expect_request(f"**/conversations/{conversation}") as patch:
        field.press("Enter")
    assert patch.value.method == "PATCH"
    assert patch.value.post_data_json == {"title": "Holiday"}
    expect(page.locator(CURRENT)).to_have_text("Holiday")
    expect(page.locator(CURRENT)).to_be_focused()
    page.wait_for_load_state("networkidle")
    assert titles(page) == ["Holiday"]

    # Esc cancels: nothing is sent.
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.method) if r.method == "PATCH" else None)
    item(page, "Holiday").get_by_role("button", name="Rename").click()
    page.get_by_role("textbox", name="Title").fill("Not this")
    page.get_by_role("textbox", name="Title").press("Escape")
    expect(page.locator(CURRENT)).to_have_text("Holiday")
    assert requests == []

    page.reload()
    page.wait_for_selector("body[data-history]", state="attached")
    expect(page.locator(CURRENT)).to_have_text("Holiday")
    assert shown(page)[0] == ["user", "Plan a trip\nto Kyoto"]

    # An empty title goes back to the default one, the first line of the first message.
    item(page, "Holiday").get_by_role("button", name="Rename").click()
    page.get_by_role("textbox", name="Title").fill("")
    with page.expect_request(f"**/conversations/{conversation}") as patch:
        page.get_by_role("textbox", name="Title").press("Enter")
    assert patch.value.post_data_json == {"title": None}
    expect(page.locator(CURRENT)).to_have_text("Plan a trip")
    page.wait_for_load_state("networkidle")
    assert titles(page) == ["Plan a trip"]


def test_delete_asks_then_removes_it_and_shows_another(
    asyncio_server: Server, open_page: PageFactory
) -> None:
    page = open_page(asyncio_server)
    chat(page, "Alpha")
    alpha = shown_id(page)
    new_chat(page)
    chat(page, "Beta")
    beta = shown_id(page)
    answers = iter([False, True, True])
    asked: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        asked.append(dialog.message)
        if next(answers):
            dialog.accept()
        else:
            dialog.dismiss()

    page.on("dialog", on_dialog)
    # Dismissed: nothing happens.
    item(page, "Beta").get_by_role("button", name="Delete").click()
    assert asked and "Beta" in asked[0]
    expect(page.locator(ITEMS)).to_have_count(2)
    assert titles(page) == ["Beta", "Alpha"]
    # Confirmed: gone, and the page shows the conversation the server made current.
    with page.expect_response(f"**/conversations/{beta}") as deleted:
        item(page, "Beta").get_by_role("button", name="Delete").click()
    assert deleted.value.request.method == "DELETE"
    assert deleted.value.json() == {"success": True, "current": alpha}
    expect(page.locator(ITEMS)).to_have_text(["Alpha"])
    expect(page.locator(CURRENT)).to_have_text("Alpha")
    expect(page.locator("body")).to_have_attribute("data-conversation", alpha)
    expect(page.locator("#messages > .msg.user .text")).to_have_text(["Alpha"])
    assert titles(page) == ["Alpha"]
    # Not the one shown: the page stays where it is.
    new_chat(page)
    chat(page, "Gamma")
    item(page, "Alpha").get_by_role("button", name="Delete").click()
    expect(page.locator(ITEMS)).to_have_text(["Gamma"])
    assert shown(page) == [["user", "Gamma"], ["assistant", ROUND_EN[0]]]
    assert titles(page) == ["Gamma"]


def test_switching_is_disabled_while_a_reply_streams(
    busy_server: Server, open_page: PageFactory
) -> None:
    page = open_page(busy_server)
    send(page, "Tell me a long story")
    reply_longer_than(page, 0)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("body")).to_have_attribute("data-state", "idle")
    wait_idle(busy_server)
    new_chat(page)
    send(page, "Another story")
    reply_longer_than(page, 10)
    expect(page.locator("#new-chat")).to_be_disabled()
    other = item(page, "Tell me a long story")
    expect(other.get_by_role("button", name="Tell me a long story")).to_be_disabled()
    expect(other.get_by_role("button", name="Delete")).to_be_disabled()
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("body")).to_have_attribute("data-state", "idle")
    expect(page.locator("#new-chat")).to_be_enabled()
    expect(other.get_by_role("button", name="Tell me a long story")).to_be_enabled()
    wait_idle(busy_server)


def test_phone_sidebar_hides_behind_a_toggle(
    asyncio_server: Server, open_page: PageFactory, screenshot: Screenshot
) -> None:
    width, height = PHONE_WIDTH, PHONE_HEIGHT
    page = open_phone(open_page, asyncio_server)
    sidebar = page.get_by_role("navigation", name="Conversations")
    toggle = page.get_by_role("button", name="Conversations")
    expect(sidebar).to_be_hidden()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    page.locator("#input").fill("Hello from a phone")
    page.get_by_role("button", name="Send").tap()
    wait_replies(page, 1)
    composer = page.locator("#composer").bounding_box()
    toggle.tap()
    expect(sidebar).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(page.locator(CURRENT)).to_have_text("Hello from a phone")
    # Over the chat, not beside it: the chat keeps its place and width.
    box = sidebar.bounding_box()
    assert box is not None and box["x"] == 0 and box["width"] < width
    assert page.locator("#composer").bounding_box() == composer
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    screenshot(page, "phone-sidebar")
    # Esc closes it; a new chat from it closes it too.
    page.keyboard.press("Escape")
    expect(sidebar).to_be_hidden()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    toggle.tap()
    page.locator("#new-chat").tap()
    expect(sidebar).to_be_hidden()
    expect(page.locator("#messages > .msg")).to_have_count(0)
    # Tapping outside it closes it.
    toggle.tap()
    expect(sidebar).to_be_visible()
    page.mouse.click(width - 10, height // 2)
    expect(sidebar).to_be_hidden()
    # On a wide screen it is always there, and the toggle is not.
    page.set_viewport_size({"width": 1280, "height": 800})
    expect(sidebar).to_be_visible()
    expect(toggle).to_be_hidden()


def test_the_sidebar_survives_a_reload_with_the_current_conversation(
    asyncio_server: Server, open_page: PageFactory, screenshot: Screenshot
) -> None:
    page = open_page(asyncio_server)
    chat(page, "Plan a trip to Kyoto")
    first = shown_id(page)
    new_chat(page)
    chat(page, "Write a haiku about rain")
    new_chat(page)
    chat(page, "Explain server-sent events")
    item(page, "Plan a trip to Kyoto").get_by_role("button", name="Plan a trip to Kyoto").click()
    expect(page.locator(CURRENT)).to_have_text("Plan a trip to Kyoto")
    expect(page.locator("#messages > .msg.user .text")).to_have_text(["Plan a trip to Kyoto"])
    # Listed in the server's order (most recently used first: the turns decide).
    expected = ["Explain server-sent events", "Write a haiku about rain", "Plan a trip to Kyoto"]
    assert titles(page) == expected
    expect(page.locator(ITEMS)).to_have_text(expected)
    page.reload()
    page.wait_for_selector("body[data-history]", state="attached")
    expect(page.locator(ITEMS)).to_have_text(expected)
    expect(page.locator(CURRENT)).to_have_text("Plan a trip to Kyoto")
    expect(page.locator("body")).to_have_attribute("data-conversation", first)
    assert shown(page) == [["user", "Plan a trip to Kyoto"], ["assistant", ROUND_EN[0]]]
    assert page.locator(CURRENT).count() == 1
    page.mouse.move(0, 0)
    screenshot(page, "sidebar")


def test_japanese_sidebar(trio_server: Server, open_page: PageFactory) -> None:
    page = open_page(trio_server)
    expect(page.get_by_role("navigation", name="会話一覧")).to_be_visible()
    expect(page.locator("#new-chat")).to_have_text("新しいチャット")
    send(page, "こんにちは")
    wait_replies(page, 1)
    entry = page.locator(ITEMS).first
    expect(entry).to_contain_text("こんにちは")
    expect(entry.get_by_role("button", name="名前を変更")).to_be_visible()
    expect(entry.get_by_role("button", name="削除")).to_be_visible()


def test_a_conversation_deleted_in_another_tab(
    asyncio_server: Server, open_page: PageFactory
) -> None:
    page = open_page(asyncio_server)
    chat(page, "Kept chat")
    kept = shown_id(page)
    new_chat(page)
    chat(page, "Doomed chat")
    doomed = shown_id(page)
    # Another tab of the same session deletes the conversation this page shows.
    assert page.request.delete(f"conversations/{doomed}").status == 200
    with page.expect_response("**/chat_stream") as refused:
        send(page, "Anyone there?")
    assert refused.value.status == 404
    # The page says so and shows the conversation the server now calls current; the text
    # that could not be sent is back in the box.
    expect(page.locator("#notice")).to_contain_text("deleted")
    expect(page.locator("body")).to_have_attribute("data-conversation", kept)
    expect(page.locator("#messages > .msg")).to_have_count(2)
    assert shown(page) == [["user", "Kept chat"], ["assistant", ROUND_EN[0]]]
    expect(page.locator("#input")).to_have_value("Anyone there?")
    expect(page.locator(ITEMS)).to_have_text(["Kept chat"])
    # And the next send goes to it.
    with page.expect_request("**/chat_stream") as turn:
        page.locator("#send").click()
    assert turn.value.post_data_json == {"user_input": "Anyone there?", "conversation_id": kept}
    wait_replies(page, 2)
