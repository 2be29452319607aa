"""The web UI resumes a reply: after a network drop (every connection cut by a proxy between
Chromium and the server, mid-reply) and after a reload during a reply. The reply shown at the
end is exactly the one the server saved: no event lost, none twice."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from chatstream.adapters.model.mock_texts import LONG_EN
from tests.http.conftest import Server, free_port

from .conftest import CHROMIUM, PageFactory, start_web_server, wait_idle

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"
)
pytest.importorskip("playwright.sync_api", reason="the web UI tests need `pip install playwright`")

from playwright.sync_api import Page, expect  # noqa: E402

from .test_web_ui import reply_longer_than, send, server_history  # noqa: E402


class CuttableProxy:
    """A TCP proxy on loopback whose connections can all be cut at once (a network drop: the
    browser sees its streams fail, the server sees its clients go), while new connections
    still go through. It notes the head of every request."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.heads: list[str] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, requests: bool) -> None:
        try:
            while data := source.recv(65536):
                if requests and data[:4] in (b"GET ", b"POST"):
                    with self._lock:
                        self.heads.append(data.split(b"\r\n\r\n", 1)[0].decode("latin-1"))
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every open connection, both ways."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


@pytest.fixture(scope="module")
def story_server() -> Iterator[Server]:
    """The long story at 0.02 s a word (about 4 s a reply); a turn whose client has gone
    waits 5 s for it to come back (the default)."""
    server = start_web_server(
        "asyncio", {"mock_params": {"type": "long", "time_per_token_sec": 0.02}}
    )
    yield server
    server.stop()


def shown_messages(page: Page) -> list[list[str]]:
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#messages > .msg",
        "nodes => nodes.map(n => [n.dataset.role, n.querySelector('.text').dataset.source])",
    )


def test_a_network_drop_mid_reply_resumes_with_the_missing_events(
    story_server: Server, open_page: PageFactory
) -> None:
    proxy = CuttableProxy(int(story_server.base_url.rsplit(":", 1)[1]))
    try:
        page = open_page(Server(story_server.process, proxy.base_url, "asyncio", story_server.log))
        send(page, "Tell me a story")
        before = reply_longer_than(page, 40)
        proxy.cut()
        reply = page.locator("#messages > .msg.assistant").last
        expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
        expect(page.locator("body")).to_have_attribute("data-state", "idle")
        history = server_history(page)
        assert history is not None and history[-1]["status"] == "complete"
        shown = reply.locator(".text").get_attribute("data-source") or ""
        assert shown == history[-1]["content"] == LONG_EN  # nothing lost, nothing twice
        assert shown.startswith(before)
        # It came back with the id of the last event it had, and no notice says it was lost.
        resumed = [h for h in proxy.heads if h.startswith("GET /chat_stream?message_id=")]
        assert resumed and "last-event-id:" in resumed[0].lower()
        expect(page.locator("#notice")).to_be_hidden()
        expect(reply.locator(".note")).to_have_text("")
    finally:
        proxy.close()
    wait_idle(story_server)


def test_a_reload_during_a_reply_follows_it_to_its_end(
    story_server: Server, open_page: PageFactory
) -> None:
    page = open_page(story_server)
    send(page, "Tell me a story")
    reply_longer_than(page, 40)
    page.reload()
    page.wait_for_selector("body[data-history]", state="attached")
    reply = page.locator("#messages > .msg.assistant").last
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
    expect(page.locator("body")).to_have_attribute("data-state", "idle")
    assert shown_messages(page) == [["user", "Tell me a story"], ["assistant", LONG_EN]]
    history = server_history(page)
    assert history is not None
    assert [[m["role"], m["content"]] for m in history] == shown_messages(page)
    # The conversation goes on after it.
    send(page, "Again")
    expect(page.locator("#messages > .msg.assistant")).to_have_count(2)
    expect(page.locator("#messages > .msg.assistant").last).to_have_attribute(
        "data-status", "complete", timeout=20_000
    )
    wait_idle(story_server)


def test_a_reload_follows_the_reply_in_its_own_conversation(
    story_server: Server, open_page: PageFactory
) -> None:
    page = open_page(story_server)
    send(page, "First")
    expect(page.locator("#messages > .msg.assistant").last).to_have_attribute(
        "data-status", "complete", timeout=20_000
    )
    first = page.get_attribute("body", "data-conversation")
    page.locator("#new-chat").click()
    expect(page.locator("#messages > .msg")).to_have_count(0)
    second = page.get_attribute("body", "data-conversation")
    assert first and second and first != second
    send(page, "Tell me a story")
    reply_longer_than(page, 40)
    # Another tab of the session chooses the first conversation meanwhile.
    assert page.request.post(f"conversations/{first}/select").status == 200
    page.reload()
    page.wait_for_selector("body[data-history]", state="attached")
    reply = page.locator("#messages > .msg.assistant").last
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
    expect(page.locator("body")).to_have_attribute("data-state", "idle")
    # The reply was followed where it belongs, not into the session's current conversation.
    expect(page.locator("body")).to_have_attribute("data-conversation", second)
    assert shown_messages(page) == [["user", "Tell me a story"], ["assistant", LONG_EN]]
    response = page.request.get(f"get_history?conversation_id={first}")
    assert [m["content"] for m in response.json()["messages"]][:1] == ["First"]
    wait_idle(story_server)
