"""Scale-out, all on loopback: a real Redis, two server processes sharing it and one secret
key, and Debian's nginx running the configuration of ``docs/deployment.md`` (read from the
page, so the documented configuration is the tested one). Test-only additions: the nodes'
addresses and the listening port, an ``X-Upstream`` header naming the node that answered,
and, for the round-robin tests, no ``hash`` line."""

from __future__ import annotations

import pathlib
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.http.conftest import RedisServer, Server, ServerFactory, free_port
from tests.http.test_resumable_streams import SSE, events, index_of, read_until, text_of

ROOT = pathlib.Path(__file__).parent.parent.parent
HASH_LINE = "    hash $chatstream_affinity consistent;\n"


def documented_config() -> str:
    """The first ``nginx`` block of the deployment page's section on several nodes."""
    page = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    page = page.split("## Several nodes behind nginx\n", 1)[-1]
    blocks = re.findall(r"```nginx\n(.*?)```", page, flags=re.DOTALL)
    assert blocks, "docs/deployment.md has no nginx block"
    return str(blocks[0])


def documented_retry_line() -> str:
    """The ``proxy_next_upstream`` line of the page's section on retrying a full node's 429."""
    page = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    page = page.split("### Retrying a full node's 429 on another node\n", 1)[-1]
    blocks = re.findall(r"```nginx\n(.*?)```", page, flags=re.DOTALL)
    assert blocks, "docs/deployment.md has no nginx block for the 429 retry"
    return str(blocks[0]).strip()


def replace_once(text: str, old: str, new: str) -> str:
    # The page and this test must not drift apart silently.
    assert text.count(old) == 1, f"{old!r} is not in the documented configuration once"
    return text.replace(old, new)


class Nginx:
    """Debian's nginx in the foreground, on a free loopback port, every path in a folder."""

    def __init__(
        self,
        folder: pathlib.Path,
        nodes: tuple[Server, Server],
        *,
        hashed: bool,
        retry_429: bool = False,
    ):
        self.port = free_port()
        config = documented_config()
        config = replace_once(config, "10.0.0.1:8000", f"127.0.0.1:{nodes[0].port}")
        config = replace_once(config, "10.0.0.2:8000", f"127.0.0.1:{nodes[1].port}")
        config = replace_once(config, "listen 80;", f"listen 127.0.0.1:{self.port};")
        config = replace_once(
            config,
            "proxy_pass http://chatstream;",
            "proxy_pass http://chatstream;\n        add_header X-Upstream $upstream_addr always;",
        )
        if not hashed:
            config = replace_once(config, HASH_LINE, "")
        if retry_429:
            line = documented_retry_line()
            config = replace_once(config, "proxy_next_upstream error timeout;", line)
        temp = "\n".join(
            f"    {kind}_temp_path {folder / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = folder / "nginx.conf"
        conf.write_text(
            "worker_processes 1;\n"
            "events { worker_connections 256; }\n"
            f"http {{\n    access_log off;\n{temp}\n{config}}}\n",
            encoding="utf-8",
        )
        directives = f"daemon off; pid {folder / 'nginx.pid'}; error_log {folder / 'error.log'};"
        self.error_log = folder / "error.log"
        self.process = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(folder), "-g", directives],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{self.base_url}/health", timeout=1)
                return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.error_log.read_text() if self.error_log.exists() else ""
                raise RuntimeError(f"nginx did not start: {log}")
            time.sleep(0.05)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful, as `nginx -s quit`
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


NginxFactory = Callable[..., Nginx]


@pytest.fixture
def cluster(
    start_server: ServerFactory, redis_server: RedisServer, tmp_path: pathlib.Path
) -> Iterator[Callable[..., tuple[Nginx, Server, Server]]]:
    """Two nodes on one Redis, and nginx in front of them."""
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    started: list[Nginx] = []

    def start(
        *,
        hashed: bool,
        mock: dict[str, object],
        options: dict[str, object] | None = None,
        retry_429: bool = False,
    ) -> tuple[Nginx, Server, Server]:
        app = {"redis_url": redis_server.url}
        options = {"mock_params": mock, **(options or {})}
        a, b = (
            start_server(factory="tests.http.apps:redis_app", options=options, app=app)
            for _ in range(2)
        )
        nginx = Nginx(tmp_path, (a, b), hashed=hashed, retry_429=retry_429)
        started.append(nginx)
        return nginx, a, b

    yield start
    for nginx in started:
        nginx.stop()


def node_of(response: httpx.Response, *nodes: Server) -> Server:
    """The node that answered (the last address nginx tried)."""
    address = response.headers["x-upstream"].split(",")[-1].strip()
    (node,) = [n for n in nodes if address == f"127.0.0.1:{n.port}"]
    return node


def chat(http: httpx.Client, text: str) -> httpx.Response:
    response = http.post("/chat_stream", json={"user_input": text})
    response.read()
    return response


def user_inputs(http: httpx.Client) -> list[str]:
    messages = http.get("/get_history").json()["messages"]
    return [m["content"] for m in messages if m["role"] == "user"]


FAST = {"type": "round", "time_per_token_sec": 0.0}


def test_round_robin_the_history_follows_from_node_to_node_and_sse_streams(
    cluster: Callable[..., tuple[Nginx, Server, Server]],
) -> None:
    nginx, a, b = cluster(hashed=False, mock={"type": "long", "time_per_token_sec": 0.01})
    with httpx.Client(base_url=nginx.base_url, timeout=30) as http:
        served = []
        for i in range(4):
            response = chat(http, f"turn {i}")
            assert response.status_code == 200, response.text
            served.append(node_of(response, a, b))
        assert {a, b} <= set(served)
        assert user_inputs(http) == [f"turn {i}" for i in range(4)]
        # Unbuffered: the first event comes through while the node is still generating.
        headers = {"Accept": "text/event-stream"}
        with http.stream("POST", "/chat_stream", json={"user_input": "long"}, headers=headers) as r:
            lines = r.iter_lines()
            first = next(lines)
            assert first.startswith("event: "), first
            node = node_of(r, a, b)
            load = httpx.get(f"{node.base_url}/load").json()
            rest = "\n".join(lines)
            assert load["running"] == 1
            assert "event: done" in rest


def test_two_turns_of_one_conversation_on_two_nodes_exactly_one_409(
    cluster: Callable[..., tuple[Nginx, Server, Server]],
) -> None:
    nginx, a, b = cluster(hashed=False, mock={"type": "round", "time_per_token_sec": 0.1})
    with httpx.Client(base_url=nginx.base_url, timeout=30) as http:
        assert chat(http, "hello").status_code == 200
        answers: list[httpx.Response] = []
        barrier = threading.Barrier(2)

        def post(text: str) -> None:
            barrier.wait()
            answers.append(chat(http, text))

        threads = [threading.Thread(target=post, args=(f"racing {i}",)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {node_of(r, a, b) for r in answers} == {a, b}
        assert sorted(r.status_code for r in answers) == [200, 409]
        (busy,) = [r for r in answers if r.status_code == 409]
        assert busy.json()["error"] == "conversation_busy"
        assert len(user_inputs(http)) == 2


def test_with_the_hash_a_killed_node_fails_over_with_the_history(
    cluster: Callable[..., tuple[Nginx, Server, Server]],
) -> None:
    nginx, a, b = cluster(hashed=True, mock=FAST)
    with httpx.Client(base_url=nginx.base_url, timeout=30) as http:
        # The first turn has no cookie yet and lands anywhere; the cookie then pins the
        # conversation to one node.
        assert chat(http, "turn 0").status_code == 200
        home = node_of(chat(http, "turn 1"), a, b)
        for i in range(2, 4):
            assert node_of(chat(http, f"turn {i}"), a, b) is home
        other = b if home is a else a
        home.process.kill()
        home.process.wait()
        killed = time.monotonic()
        after = chat(http, "after the kill")
        failover = time.monotonic() - killed
        assert after.status_code == 200, after.text
        assert node_of(after, a, b) is other
        assert failover < 5, failover
        assert user_inputs(http) == [*(f"turn {i}" for i in range(4)), "after the kill"]
        assert node_of(chat(http, "and on"), a, b) is other


def test_a_redis_outage_is_a_clear_503_through_nginx_then_recovery(
    cluster: Callable[..., tuple[Nginx, Server, Server]], redis_server: RedisServer
) -> None:
    nginx, a, b = cluster(hashed=False, mock=FAST)
    with httpx.Client(base_url=nginx.base_url, timeout=30) as http:
        assert chat(http, "before").status_code == 200
        redis_server.process_save()
        redis_server.stop()
        outage = [chat(http, f"during {i}") for i in range(4)]
        assert {node_of(r, a, b) for r in outage} == {a, b}  # every node, not retried
        for response in outage:
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "2"
            assert response.json()["error"] == "session_store_unavailable"
        redis_server.start()
        assert user_inputs(http) == ["before"]
        for i in range(2):
            assert chat(http, f"after {i}").status_code == 200
        assert user_inputs(http) == ["before", "after 0", "after 1"]


def test_through_nginx_a_dropped_stream_resumes_on_the_node_that_runs_it(
    cluster: Callable[..., tuple[Nginx, Server, Server]],
) -> None:
    # The reconnect carries the session cookie, so the hash sends it to the turn's node.
    nginx, a, b = cluster(hashed=True, mock={"type": "long", "time_per_token_sec": 0.02})
    with httpx.Client(base_url=nginx.base_url, timeout=30) as http:
        assert chat(http, "hello").status_code == 200  # the session cookie, from here on
        body = {"user_input": "a story", "generation_params": {"max_new_tokens": 60}}
        with http.stream("POST", "/chat_stream", json=body, headers=SSE) as response:
            home = node_of(response, a, b)
            before = read_until(events(response.iter_lines()), 3)
        resumed = http.get("/chat_stream", headers={**SSE, "Last-Event-ID": before[-1]["id"]})
        assert resumed.status_code == 200 and node_of(resumed, a, b) is home
        after = list(events(iter(resumed.text.splitlines())))
        assert after[-1]["event"] == "done"
        got = before + after
        assert [index_of(e) for e in got] == list(range(len(got)))
        reply = http.get("/get_history").json()["messages"][-1]
        assert text_of(got) == reply["content"] and reply["status"] == "complete"


@pytest.mark.parametrize("retry", [False, True], ids=["as-documented", "with-the-429-retry"])
def test_a_full_nodes_429_is_passed_on_or_retried_on_the_other_node(
    cluster: Callable[..., tuple[Nginx, Server, Server]], retry: bool
) -> None:
    full = {
        "num_of_concurrent_executions": 1,
        "max_queue_size": 0,
        "too_many_request_as_http_error": True,
    }
    mock = {"type": "long", "time_per_token_sec": 0.02}
    nginx, a, b = cluster(hashed=False, mock=mock, options=full, retry_429=retry)
    hold = {"user_input": "hold", "generation_params": {"max_new_tokens": 150}}
    # Another browser holds node a's only slot (3 s of reply), straight to a.
    with (
        httpx.Client(timeout=30) as holder,
        holder.stream("POST", f"{a.base_url}/chat_stream", json=hold) as held,
    ):
        chunks = held.iter_raw()  # kept: a dropped iterator would close the stream
        next(chunks)
        with httpx.Client(base_url=nginx.base_url, timeout=30) as http:
            short = {"generation_params": {"max_new_tokens": 2}}
            answers = [chat_with(http, {"user_input": f"q{i}", **short}) for i in range(4)]
    tried = [r.headers["x-upstream"].split(", ") for r in answers]
    a_addr, b_addr = (f"127.0.0.1:{n.port}" for n in (a, b))
    if retry:
        # Every request is served: those sent to the full node first go on to the other.
        assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
        assert [a_addr, b_addr] in tried
        # nginx counts the 429 as a failed attempt: with max_fails=1 the full node is left
        # out for fail_timeout, and round-robin sends nothing more to it meanwhile.
        assert sum(a_addr in t for t in tried) == 1, tried
    else:
        refused = [t for r, t in zip(answers, tried, strict=True) if r.status_code == 429]
        assert refused and all(t == [a_addr] for t in refused)
        assert {r.status_code for r in answers} == {200, 429}


def chat_with(http: httpx.Client, body: dict[str, object]) -> httpx.Response:
    response = http.post("/chat_stream", json=body)
    response.read()
    return response
