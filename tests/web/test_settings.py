"""The settings dialog: the conversation's temperature and longest reply, read from and saved
to the server's per-session parameters; a value the server refuses is shown, not saved."""

from __future__ import annotations

import pytest

from tests.http.conftest import Server

from .conftest import CHROMIUM, PageFactory

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"
)
pytest.importorskip("playwright.sync_api", reason="the web UI tests need `pip install playwright`")

from playwright.sync_api import Page, expect  # noqa: E402

from .test_web_ui import last_reply, send, server_history  # noqa: E402


def server_params(page: Page) -> dict[str, object]:
    response = page.request.get("get_generation_params")
    assert response.ok
    params: dict[str, object] = response.json()["generation_params"]
    return params


def test_settings_are_the_sessions_and_shape_the_next_reply(
    asyncio_server: Server, open_page: PageFactory
) -> None:
    page = open_page(asyncio_server)
    defaults = server_params(page)
    page.get_by_role("button", name="Settings").click()
    dialog = page.get_by_role("dialog", name="Settings")
    expect(dialog).to_be_visible()
    temperature = dialog.get_by_label("Temperature")
    longest = dialog.get_by_label("Longest reply (tokens)")
    assert float(temperature.input_value()) == defaults["temperature"]
    assert int(longest.input_value()) == defaults["max_new_tokens"]

    # Refused by the server: said in the dialog, nothing stored.
    temperature.fill("-1")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog.get_by_role("alert")).to_contain_text("temperature")
    expect(dialog).to_be_visible()
    assert server_params(page) == defaults

    temperature.fill("0.3")
    longest.fill("3")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_hidden()
    params = server_params(page)
    assert (params["temperature"], params["max_new_tokens"]) == (0.3, 3)

    # The next reply is cut at three tokens.
    send(page, "Tell me more")
    reply = last_reply(page)
    expect(reply).to_have_attribute("data-status", "complete")
    expect(reply.locator(".note")).to_have_text("The reply reached its length limit.")
    history = server_history(page)
    assert history is not None and history[-1]["finish_reason"] == "length"

    # Kept by the server: the same after a reload.
    page.reload()
    page.wait_for_selector("body[data-history]", state="attached")
    page.get_by_role("button", name="Settings").click()
    expect(page.get_by_label("Longest reply (tokens)")).to_have_value("3")
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("dialog")).to_be_hidden()


def current_entry(page: Page) -> dict[str, object]:
    """The shown conversation's entry in ``GET /conversations``."""
    body = page.request.get("conversations").json()
    shown = page.get_attribute("body", "data-conversation")
    assert shown == body["current"]
    (entry,) = [c for c in body["conversations"] if c["id"] == shown]
    return dict(entry)


def test_the_system_prompt_is_the_conversations_own(
    asyncio_server: Server, open_page: PageFactory
) -> None:
    page = open_page(asyncio_server)
    send(page, "Hello")
    expect(last_reply(page)).to_have_attribute("data-status", "complete")
    expect(page.locator("body")).to_have_attribute("data-state", "idle")
    assert current_entry(page)["system_prompt"] is None
    page.get_by_role("button", name="Settings").click()
    dialog = page.get_by_role("dialog", name="Settings")
    prompt = dialog.get_by_role("textbox", name="System prompt")
    expect(prompt).to_have_value("")
    expect(prompt).to_have_accessible_description("Empty: the model's default.")
    prompt.fill("You are a pirate.\nAnswer in one line.")
    with page.expect_request("**/conversations/*") as patch:
        dialog.get_by_role("button", name="Save").click()
    assert patch.value.method == "PATCH"
    assert patch.value.post_data_json == {"system_prompt": "You are a pirate.\nAnswer in one line."}
    expect(dialog).to_be_hidden()
    assert current_entry(page)["system_prompt"] == "You are a pirate.\nAnswer in one line."

    # A turn with it (the server puts it in place of the model's default system text).
    send(page, "Who are you?")
    expect(page.locator("#messages > .msg.assistant[data-status=complete]")).to_have_count(2)
    expect(page.locator("body")).to_have_attribute("data-state", "idle")

    # Kept by the server: the same after a reload.
    page.reload()
    page.wait_for_selector("body[data-history]", state="attached")
    page.get_by_role("button", name="Settings").click()
    expect(prompt).to_have_value("You are a pirate.\nAnswer in one line.")
    page.get_by_role("button", name="Cancel").click()

    # Another conversation has its own (none yet).
    page.locator("#new-chat").click()
    expect(page.locator("#messages > .msg")).to_have_count(0)
    page.get_by_role("button", name="Settings").click()
    expect(prompt).to_have_value("")
    page.get_by_role("button", name="Cancel").click()

    # Emptied: back to the model's default (null).
    page.locator("#conversations button[data-action=open]").nth(1).click()
    expect(page.locator("#messages > .msg")).to_have_count(4)
    page.get_by_role("button", name="Settings").click()
    expect(prompt).to_have_value("You are a pirate.\nAnswer in one line.")
    prompt.fill("")
    with page.expect_request("**/conversations/*") as patch:
        dialog.get_by_role("button", name="Save").click()
    assert patch.value.post_data_json == {"system_prompt": None}
    expect(dialog).to_be_hidden()
    assert current_entry(page)["system_prompt"] is None
