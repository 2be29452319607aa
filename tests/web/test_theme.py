"""Dark mode: the page follows the system's setting, live, until its toggle chooses; the
choice is remembered across reloads; and both themes keep text readable (WCAG AA contrast,
measured on the colours Chromium computes)."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from tests.http.conftest import Server

from .conftest import CHROMIUM, PageFactory

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"
)
pytest.importorskip("playwright.sync_api", reason="the web UI tests need `pip install playwright`")

from playwright.sync_api import Page, expect  # noqa: E402

from .test_web_ui import Screenshot, send, wait_replies  # noqa: E402

# Text against its background: (what, foreground selector or None for the element's own
# colour, the element whose background it sits on, the ratio it needs). Built in the page so
# that every state's CSS applies (notices of each kind, a placeholder, pressed buttons).
CONTRAST = """() => {
  const rgb = (value) => {
    const [r, g, b, a = 1] = value.match(/[\\d.]+/g).map(Number);
    return { r, g, b, a };
  };
  const lum = ({ r, g, b }) => {
    const f = (c) => ((c /= 255) <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (node) => {
    for (; node; node = node.parentElement) {
      const bg = rgb(getComputedStyle(node).backgroundColor);
      if (bg.a > 0) return bg;
    }
    return { r: 255, g: 255, b: 255 };
  };
  const ratio = (fg, bg) => {
    const [hi, lo] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    return (hi + 0.05) / (lo + 0.05);
  };
  const dock = document.querySelector(".dock-inner");
  const made = [];
  const make = (html) => {
    const box = document.createElement("div");
    box.innerHTML = html;
    dock.prepend(box);
    made.push(box);
    return box.firstElementChild;
  };
  const q = (selector) => document.querySelector(selector);
  const pairs = {
    "text on the page": [document.body, document.body],
    "muted hint": [q(".hint"), q(".hint")],
    "assistant bubble": [q(".msg.assistant .text"), q(".msg.assistant .bubble")],
    "user bubble": [q(".msg.user .text"), q(".msg.user .bubble")],
    "error notice": [make('<div class="notice">x</div>')],
    "busy notice": [make('<div class="notice busy">x</div>')],
    "info notice": [make('<div class="notice info">x</div>')],
    "note": [make('<div class="note">x</div>')],
    "error note": [make('<div class="note error">x</div>')],
    "send icon": [make('<button class="round-button">x</button>')],
    "stop icon": [make('<button class="round-button stop">x</button>')],
    "pressed like": [make('<button class="icon-button" aria-pressed="true">x</button>')],
    "versions counter": [make('<span class="versions-count">1 / 2</span>')],
    "editor": [make('<div class="editor"><textarea>x</textarea></div>').firstElementChild],
  };
  // The sidebar's entries: one of each kind, in the list itself.
  const list = q("#conversations");
  const entry = (html) => {
    const item = document.createElement("li");
    item.className = "conversation";
    item.innerHTML = html;
    list.append(item);
    made.push(item);
    return item.firstElementChild;
  };
  pairs["conversation"] = [entry('<button class="conversation-open">x</button>')];
  pairs["current conversation"] = [
    entry('<button class="conversation-open" aria-current="true">x</button>'),
  ];
  pairs["untitled conversation"] = [entry('<button class="conversation-open untitled">x</button>')];
  pairs["current untitled"] = [
    entry('<button class="conversation-open untitled" aria-current="true">x</button>'),
  ];
  pairs["renamed title"] = [entry('<input class="conversation-rename" value="x">')];
  pairs["new chat"] = [q("#new-chat")];
  // The settings dialog's system prompt and its hint (computed while the dialog is closed).
  pairs["system prompt"] = [q("#setting-system-prompt")];
  pairs["system prompt hint"] = [q("#system-prompt-hint")];
  const out = {};
  for (const [name, [fg, bgNode]] of Object.entries(pairs)) {
    out[name] = ratio(rgb(getComputedStyle(fg).color), background(bgNode || fg));
  }
  const input = document.querySelector("#input");
  out["placeholder"] = ratio(
    rgb(getComputedStyle(input, "::placeholder").color), background(input)
  );
  for (const box of made) box.remove();
  return out;
}"""


Scheme = Literal["light", "dark"]


def expect_theme(page: Page, name: str) -> None:
    expect(page.locator("html")).to_have_attribute("data-theme", name)


def contrast(page: Page) -> dict[str, float]:
    result: Any = page.evaluate(CONTRAST)
    return {name: float(value) for name, value in result.items()}


@pytest.mark.parametrize("system", ["light", "dark"])
def test_the_page_follows_the_system_until_the_toggle_chooses_and_remembers(
    asyncio_server: Server, open_page: PageFactory, system: Scheme
) -> None:
    other: Scheme = "dark" if system == "light" else "light"
    page = open_page(asyncio_server, color_scheme=system)
    toggle = page.locator("#theme")
    expect_theme(page, system)
    expect(toggle).to_have_attribute("aria-pressed", str(system == "dark").lower())
    expect(toggle).to_have_accessible_name("Dark mode")
    # Followed live while nothing was chosen.
    page.emulate_media(color_scheme=other)
    expect_theme(page, other)
    page.emulate_media(color_scheme=system)
    expect_theme(page, system)
    # Chosen: the other theme, kept across a reload and against the system.
    toggle.click()
    expect_theme(page, other)
    expect(toggle).to_have_attribute("aria-pressed", str(other == "dark").lower())
    page.reload()
    page.wait_for_selector("body[data-history]", state="attached")
    expect_theme(page, other)
    page.emulate_media(color_scheme=other)
    page.emulate_media(color_scheme=system)
    expect_theme(page, other)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert (background == "rgb(15, 17, 21)") == (other == "dark"), background


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_both_themes_have_aa_contrast(
    asyncio_server: Server, open_page: PageFactory, screenshot: Screenshot, scheme: Scheme
) -> None:
    page = open_page(asyncio_server, color_scheme=scheme)
    send(page, "Hello there")
    wait_replies(page, 1)
    expect_theme(page, scheme)
    ratios = contrast(page)
    # Text needs 4.5:1; an icon that carries state (the pressed like) needs 3:1.
    low = {
        name: round(value, 2)
        for name, value in ratios.items()
        if value < (3.0 if name == "pressed like" else 4.5)
    }
    assert low == {}, ratios
    screenshot(page, f"theme-{scheme}")
