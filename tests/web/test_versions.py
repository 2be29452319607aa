"""Editing a sent message and the versions it leaves: the pencil (or ↑ in the empty box) opens
an editor, sending it streams a new reply in place of the old branch, and "‹ 1 / 2 ›" under a
message switches between its versions on the server."""

from __future__ import annotations

from typing import Any

import pytest

from chatstream.adapters.model.mock_texts import ROUND_EN
from tests.http.conftest import Server

from .conftest import CHROMIUM, PageFactory

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"
)
pytest.importorskip("playwright.sync_api", reason="the web UI tests need `pip install playwright`")

from playwright.sync_api import Page, expect  # noqa: E402

from .test_web_ui import (  # noqa: E402
    Screenshot,
    expect_reply_text,
    last_reply,
    send,
    server_history,
    wait_replies,
)

USERS = "#messages > .msg.user"
REPLIES = "#messages > .msg.assistant"


def on_page(page: Page) -> list[dict[str, Any]]:
    """What the page shows: id, role and text of each message."""
    result: list[dict[str, Any]] = page.eval_on_selector_all(
        "#messages > .msg",
        """nodes => nodes.map(n => ({
            id: n.dataset.messageId || null,
            role: n.dataset.role,
            content: n.querySelector('.text').dataset.source,
        }))""",
    )
    return result


def on_server(page: Page) -> list[dict[str, Any]]:
    history = server_history(page)
    assert history is not None
    return [{"id": m["id"], "role": m["role"], "content": m["content"]} for m in history]


def versions(message: Any) -> Any:
    return message.get_by_role("group", name="Versions")


def expect_versions(message: Any, text: str) -> None:
    group = versions(message)
    expect(group.locator(".versions-count")).to_have_text(text)
    index, total = (int(part) for part in text.split(" / "))
    previous = group.get_by_role("button", name="Previous version")
    following = group.get_by_role("button", name="Next version")
    (expect(previous).to_be_disabled if index == 1 else expect(previous).to_be_enabled)()
    (expect(following).to_be_disabled if index == total else expect(following).to_be_enabled)()


def two_turns(page: Page) -> None:
    send(page, "Hello there")
    wait_replies(page, 1)
    send(page, "What is SSE?")
    wait_replies(page, 2)
    # Ids come from the history read after each turn: then the pencil shows.
    expect(page.locator(USERS).last.get_by_role("button", name="Edit")).to_be_visible()


def test_editing_a_message_makes_a_new_version(
    asyncio_server: Server, open_page: PageFactory, screenshot: Screenshot
) -> None:
    page = open_page(asyncio_server)
    two_turns(page)
    before = on_page(page)
    assert before == on_server(page)
    user = page.locator(USERS).last
    user_id = user.get_attribute("data-message-id")
    old_reply = before[3]["id"]
    assert user_id and old_reply
    # No versions yet: no arrows.
    expect(versions(user)).to_have_count(0)

    # The pencil turns the bubble into an editor; Esc cancels it.
    user.get_by_role("button", name="Edit").click()
    editor = page.get_by_role("textbox", name="Edit your message")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("What is SSE?")
    expect(user.locator(".bubble")).to_be_hidden()
    editor.press("Escape")
    expect(editor).to_have_count(0)
    expect(user.locator(".text")).to_have_text("What is SSE?")
    assert on_page(page) == before

    # Cancel does too; Shift+Enter is a new line, Enter sends.
    user.get_by_role("button", name="Edit").click()
    page.get_by_role("button", name="Cancel").click()
    expect(editor).to_have_count(0)
    user.get_by_role("button", name="Edit").click()
    editor.fill("What is HTTP?")
    editor.press("Shift+Enter")
    editor.press_sequentially("Briefly.")
    expect(editor).to_have_value("What is HTTP?\nBriefly.")
    conversation = page.get_attribute("body", "data-conversation")
    with page.expect_request("**/chat_stream") as turn:
        editor.press("Enter")
    assert turn.value.post_data_json == {
        "user_input": "What is HTTP?\nBriefly.",
        "edit_message_id": user_id,
        "conversation_id": conversation,
    }
    expect(editor).to_have_count(0)
    expect(page.locator("body")).to_have_attribute("data-state", "busy")
    # The new reply streams in place of the old one.
    expect(page.locator(REPLIES)).to_have_count(2)
    wait_replies(page, 2)
    expect(user.locator(".text")).to_have_text("What is HTTP?\nBriefly.")
    new_reply = last_reply(page).get_attribute("data-message-id")
    assert new_reply and new_reply != old_reply
    expect_reply_text(last_reply(page), ROUND_EN[1])
    expect_versions(user, "2 / 2")
    expect(versions(last_reply(page))).to_have_count(0)  # the reply has no other version
    expect(versions(page.locator(USERS).first)).to_have_count(0)
    edited = on_page(page)
    assert edited == on_server(page)
    assert edited[2]["id"] != user_id and edited[:2] == before[:2]
    page.mouse.move(0, 0)
    screenshot(page, "versions")

    # ‹: the first version, with its own reply.
    with page.expect_response("**/switch_version") as switched:
        versions(user).get_by_role("button", name="Previous version").click()
    assert switched.value.request.post_data_json == {
        "message_id": user_id,
        "conversation_id": conversation,
    }
    expect_versions(page.locator(USERS).last, "1 / 2")
    expect(page.locator(USERS).last.locator(".text")).to_have_text("What is SSE?")
    expect(last_reply(page)).to_have_attribute("data-message-id", old_reply)
    assert on_page(page) == before == on_server(page)
    expect(
        versions(page.locator(USERS).last).get_by_role("button", name="Next version")
    ).to_be_focused()

    # ›: back to the edit.
    versions(page.locator(USERS).last).get_by_role("button", name="Next version").click()
    expect_versions(page.locator(USERS).last, "2 / 2")
    expect(last_reply(page)).to_have_attribute("data-message-id", new_reply)
    assert on_page(page) == edited == on_server(page)

    # The next turn follows the version shown.
    send(page, "Thanks")
    wait_replies(page, 3)
    assert [m["content"] for m in on_server(page) if m["role"] == "user"] == [
        "Hello there",
        "What is HTTP?\nBriefly.",
        "Thanks",
    ]
    assert on_page(page) == on_server(page)


def test_regenerate_leaves_versions_of_the_reply(
    asyncio_server: Server, open_page: PageFactory
) -> None:
    page = open_page(asyncio_server)
    send(page, "Hi")
    wait_replies(page, 1)
    first = last_reply(page).get_attribute("data-message-id")
    last_reply(page).get_by_role("button", name="Regenerate").click()
    expect(last_reply(page)).not_to_have_attribute("data-message-id", first or "")
    wait_replies(page, 1)
    second = last_reply(page).get_attribute("data-message-id")
    expect_versions(last_reply(page), "2 / 2")
    versions(last_reply(page)).get_by_role("button", name="Previous version").click()
    expect(last_reply(page)).to_have_attribute("data-message-id", first or "")
    expect_versions(last_reply(page), "1 / 2")
    assert on_page(page) == on_server(page)
    versions(last_reply(page)).get_by_role("button", name="Next version").click()
    expect(last_reply(page)).to_have_attribute("data-message-id", second or "")
    expect_versions(last_reply(page), "2 / 2")
    assert on_page(page) == on_server(page)
    # A regenerate of the version shown adds a third.
    last_reply(page).get_by_role("button", name="Regenerate").click()
    expect(last_reply(page)).not_to_have_attribute("data-message-id", second or "")
    wait_replies(page, 1)
    expect_versions(last_reply(page), "3 / 3")


def test_arrow_up_in_the_empty_box_edits_the_last_message(
    asyncio_server: Server, open_page: PageFactory
) -> None:
    page = open_page(asyncio_server)
    box = page.get_by_role("textbox", name="Message")
    two_turns(page)
    # Not with text in the box: ↑ moves the caret there.
    box.fill("draft")
    box.press("ArrowUp")
    expect(page.get_by_role("textbox", name="Edit your message")).to_have_count(0)
    box.fill("")
    box.press("ArrowUp")
    editor = page.get_by_role("textbox", name="Edit your message")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("What is SSE?")
    expect(page.locator(USERS).last.locator(".editor")).to_have_count(1)
    editor.press("Escape")
    expect(editor).to_have_count(0)
    expect(box).to_be_focused()
    # Straight after a reply too (its message's id comes with the history read after it).
    send(page, "Third")
    wait_replies(page, 3)
    box.press("ArrowUp")
    expect(editor).to_have_value("Third")
    editor.fill("Third, edited")
    editor.press("Enter")
    expect(page.locator("body")).to_have_attribute("data-state", "busy")
    wait_replies(page, 3)
    expect_versions(page.locator(USERS).last, "2 / 2")
    assert on_page(page) == on_server(page)
