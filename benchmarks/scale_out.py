"""Scale-out: a killed node and a Redis outage behind nginx, in figures.

    python -m benchmarks.scale_out [--rounds 5] [--interval-ms 50] [--outage-s 2] [--loop trio]

All on loopback, with the machinery of ``tests/http/test_scale_out.py``: Debian's
``redis-server``, two ``chatstream.server`` processes with one secret key and that Redis as
their session store (``tests.http.apps:redis_app``, the mock backend at
``time_per_token_sec`` 0, so the figures are the infrastructure's and not a model's), and
Debian's nginx running the configuration of ``docs/deployment.md`` (the consistent ``hash``
on the session cookie) as the test builds it from the page. Every round starts two fresh
nodes and a fresh nginx (its failure marks start clean); Redis is shared by the rounds. A
turn is ``POST /chat_stream`` with SSE from one ``httpx`` client that keeps the cookie; a
good answer is a 200 whose stream ends with ``event: done``.

1. **Failover, one turn.** Four turns pin the conversation to its home node; the home node
   is killed (SIGKILL), and the client sends the next turn at once, again until one is good:
   the time from the kill to that good answer, the failed answers before it, and whether
   ``GET /get_history`` holds exactly the user inputs that were answered.
2. **Failover, a turn every ``--interval-ms``.** The client sends turns in a loop, and
   ``--lead-s`` in, the home node is killed, once **between** two turns (while the client
   pauses; no turn lock held) and once **during** one (as soon as Redis holds the turn's
   lock, which then stays until its TTL, ``--lock-ttl-s``). The failed answers, the longest
   gap between two good answers, the time from the kill to the next good one (the client's
   pause included), and the history as above. The loop goes on ``--after-s`` past the kill
   and past a good answer (at most ``--max-wait-s``).
3. **Redis outage.** The same loop; ``--lead-s`` in, Redis is stopped, again once between
   two turns and once during one (``SHUTDOWN SAVE``: saved and stopped in one command, so
   no answered turn can fall between the save and the stop), kept down ``--outage-s``, and
   started again on the same port and file. The 503s (their ``error``, ``Retry-After`` and
   latency), any other failed answer, the time from the restart to the next good answer,
   and the history as above.

Prints the figures (markdown tables); asserts nothing. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import inspect
import itertools
import json
import pathlib
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import httpx
import redis as redis_client
from tests.http.conftest import RedisServer, Server, launch_server
from tests.http.test_scale_out import FAST, Nginx, node_of, user_inputs

from benchmarks.processes import log
from chatstream.adapters.http.redis_store import RedisStore

#: The nodes' app: the scale-out test's, its sessions in the Redis of ``CHATSTREAM_TEST_APP``.
APP = "tests.http.apps:redis_app"
LOCK_TTL = float(inspect.signature(RedisStore).parameters["lock_ttl_seconds"].default)
SCENARIOS = ["failover", "kill-between", "kill-during", "redis-between", "redis-during"]


@dataclasses.dataclass
class Answer:
    """One turn as the client saw it."""

    user_input: str
    start: float
    end: float
    #: None: no HTTP answer (the connection failed or the stream broke off).
    status: int | None
    #: The JSON ``error``, ``"incomplete"`` (a 200 without ``event: done``), nginx's page
    #: (``"nginx"``) or the transport error's class; empty for a good answer.
    error: str = ""
    retry_after: str | None = None
    node: Server | None = None

    @property
    def good(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def latency(self) -> float:
        return self.end - self.start

    def kind(self) -> str:
        """``503 session_store_unavailable``, ``no answer (RemoteProtocolError)``..."""
        if self.status is None:
            return f"no answer ({self.error})"
        return f"{self.status} {self.error}".strip()


def turn(http: httpx.Client, text: str, nodes: Sequence[Server]) -> Answer:
    """One turn through nginx, read to the end; never raises for a failed turn."""
    start = time.monotonic()
    try:
        response = http.post("/chat_stream", json={"user_input": text, "stream": "sse"})
    except httpx.HTTPError as error:
        return Answer(text, start, time.monotonic(), None, type(error).__name__)
    answer = Answer(text, start, time.monotonic(), response.status_code)
    answer.retry_after = response.headers.get("retry-after")
    with contextlib.suppress(KeyError, ValueError):
        answer.node = node_of(response, *nodes)
    if response.status_code == 200:
        answer.error = "" if "event: done" in response.text else "incomplete"
    elif response.headers.get("content-type", "").startswith("application/json"):
        answer.error = str(response.json().get("error", ""))
    else:
        answer.error = "nginx"
    return answer


@contextlib.contextmanager
def cluster(redis: RedisServer, args: argparse.Namespace) -> Iterator[tuple[Nginx, Server, Server]]:
    """Two fresh nodes on ``redis`` and a fresh nginx in front of them."""
    app: dict[str, object] = {"redis_url": redis.url}
    if args.lock_ttl_s is not None:
        app["redis_options"] = {"lock_ttl_seconds": args.lock_ttl_s}
    env = {
        "CHATSTREAM_TEST_OPTIONS": json.dumps({"mock_params": FAST}),
        "CHATSTREAM_TEST_HTTP": "{}",
        "CHATSTREAM_TEST_APP": json.dumps(app),
    }
    loop = args.loop
    nodes: list[Server] = []
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(launch_server, factory=APP, loop=loop, env=env) for _ in range(2)
            ]
            for future in futures:
                nodes.append(future.result())
        a, b = nodes
        with tempfile.TemporaryDirectory(prefix="chatstream-scale-out-") as folder:
            nginx = Nginx(pathlib.Path(folder), (a, b), hashed=True)
            try:
                yield nginx, a, b
            finally:
                nginx.stop()
    finally:
        for node in nodes:
            node.stop()
            node.log.unlink(missing_ok=True)


def pin(http: httpx.Client, nodes: Sequence[Server], answered: list[str]) -> tuple[Server, float]:
    """Four turns: the first has no cookie yet and lands anywhere, the next three on the
    session's home node, which is returned with the median latency of those turns."""
    answers = [turn(http, f"turn {i}", nodes) for i in range(4)]
    for answer in answers:
        if not answer.good:
            raise RuntimeError(f"a turn before the kill failed: {answer.kind()}")
        answered.append(answer.user_input)
    homes = {answer.node for answer in answers[1:]}
    if len(homes) != 1 or None in homes:
        raise RuntimeError("the session did not stay on one node")
    (home,) = homes
    assert home is not None
    return home, statistics.median(a.latency for a in answers[1:])


def history_check(http: httpx.Client, answered: list[str]) -> str:
    """``yes`` if the history's user inputs are exactly the answered ones, else what differs."""
    try:
        stored = user_inputs(http)
    except (httpx.HTTPError, ValueError, KeyError) as error:
        return f"unreadable ({type(error).__name__})"
    if stored == answered:
        return "yes"
    missing = [text for text in answered if text not in stored]
    extra = [text for text in stored if text not in answered]
    parts = [f"{label} {', '.join(texts)}" for label, texts in (
        ("answered but missing:", missing), ("stored but not answered:", extra)) if texts
    ] or ["the order differs"]  # fmt: skip
    return "no: " + "; ".join(parts)


def kill(node: Server) -> float:
    """SIGKILL ``node``; returns the moment of the kill."""
    node.process.kill()
    killed = time.monotonic()
    node.process.wait()
    return killed


@dataclasses.dataclass
class Loop:
    """A client sending a turn every ``interval`` seconds until ``stop`` says so."""

    http: httpx.Client
    nodes: Sequence[Server]
    interval: float
    answers: list[Answer] = dataclasses.field(default_factory=list)

    def run(self, stop: Callable[[list[Answer]], bool]) -> None:
        i = 0
        while not stop(self.answers):
            self.answers.append(turn(self.http, f"loop {i}", self.nodes))
            i += 1
            time.sleep(self.interval)


def longest_gap(answers: list[Answer]) -> float:
    """The longest time between the ends of two consecutive good answers."""
    ends = [a.end for a in answers if a.good]
    return max((b - a for a, b in itertools.pairwise(ends)), default=0.0)


def counts(answers: list[Answer]) -> str:
    """The failed answers by kind: ``3 × 409 conversation_busy, 1 × no answer (...)``."""
    bad = collections.Counter(a.kind() for a in answers if not a.good)
    return ", ".join(f"{n} × {kind}" for kind, n in bad.most_common()) or "none"


def failover_once(redis: RedisServer, args: argparse.Namespace) -> dict[str, object]:
    with (
        cluster(redis, args) as (nginx, a, b),
        httpx.Client(base_url=nginx.base_url, timeout=args.timeout_s) as http,
    ):
        answered: list[str] = []
        home, turn_latency = pin(http, (a, b), answered)
        killed = kill(home)
        failed: list[Answer] = []
        while True:
            answer = turn(http, f"after the kill {len(failed)}", (a, b))
            if answer.good:
                answered.append(answer.user_input)
                break
            failed.append(answer)
            if time.monotonic() - killed > args.max_wait_s:
                break
            time.sleep(args.interval_ms / 1000)
        other = b if home is a else a
        return {
            "turn_ms": 1000 * turn_latency,
            "failover_ms": 1000 * (answer.end - killed) if answer.good else None,
            "failed": len(failed),
            "kinds": counts(failed),
            "by_other": "yes" if answer.node is other else "no",
            "history": history_check(http, answered),
        }


def turn_locks(client: redis_client.Redis) -> int:
    """How many turn locks Redis holds now (``RedisStore``'s default key prefix)."""
    return len(client.keys("chatstream:turn:*"))


def wait_for_moment(loop: Loop, client: redis_client.Redis, *, during: bool) -> int:
    """Wait until a turn holds its lock in Redis (``during``) or until the client pauses
    between two turns; returns the turn locks held then."""
    if during:
        while not turn_locks(client):
            time.sleep(0.001)
    else:
        # The end of the next turn, then a little into the client's pause (not just any
        # moment with no turn in flight: the pause may be about to end).
        answered = len(loop.answers)
        while len(loop.answers) == answered:
            time.sleep(0.001)
        time.sleep(min(0.01, loop.interval / 4))
    return turn_locks(client)


def continuous_once(
    redis: RedisServer, args: argparse.Namespace, *, during: bool
) -> dict[str, object]:
    """A turn every ``--interval-ms``; the home node is killed between two turns (while the
    client waits) or ``during`` one (as soon as Redis holds its turn lock)."""
    with (
        cluster(redis, args) as (nginx, a, b),
        httpx.Client(base_url=nginx.base_url, timeout=args.timeout_s) as http,
        contextlib.closing(redis_client.Redis.from_url(redis.url)) as client,
    ):
        answered: list[str] = []
        home, _ = pin(http, (a, b), answered)
        loop = Loop(http, (a, b), args.interval_ms / 1000)
        state: dict[str, float | int] = {}

        def killer() -> None:
            time.sleep(args.lead_s)
            state["locks"] = wait_for_moment(loop, client, during=during)
            state["killed"] = kill(home)

        def stop(answers: list[Answer]) -> bool:
            killed = state.get("killed")
            if killed is None:
                return False
            now = time.monotonic()
            good_after = any(x.good and x.start > killed for x in answers)
            return (now - killed > args.after_s and good_after) or now - killed > args.max_wait_s

        thread = threading.Thread(target=killer)
        thread.start()
        loop.run(stop)
        thread.join()
        killed = float(state["killed"])
        answered += [x.user_input for x in loop.answers if x.good]
        first_good = min((x.end for x in loop.answers if x.good and x.start > killed), default=None)
        return {
            "locked": "yes" if state["locks"] else "no",
            "turns": len(loop.answers),
            "failed": sum(not x.good for x in loop.answers),
            "kinds": counts(loop.answers),
            "gap_ms": 1000 * longest_gap(loop.answers),
            "failover_ms": None if first_good is None else 1000 * (first_good - killed),
            "history": history_check(http, answered),
        }


def shutdown_save(redis: RedisServer) -> None:
    """Save and stop Redis in one command (``SHUTDOWN SAVE``), and wait for the process."""
    with socket.create_connection(("127.0.0.1", redis.port), timeout=10) as sock:
        sock.sendall(b"SHUTDOWN SAVE\r\n")
        sock.recv(64)  # the connection closes when Redis exits (an error reply otherwise)
    assert redis.process is not None
    redis.process.wait(10)


def outage_once(redis: RedisServer, args: argparse.Namespace, *, during: bool) -> dict[str, object]:
    """A turn every ``--interval-ms``; Redis is stopped between two turns or ``during`` one
    (as soon as it holds the turn's lock), and started again ``--outage-s`` later."""
    with (
        cluster(redis, args) as (nginx, a, b),
        httpx.Client(base_url=nginx.base_url, timeout=args.timeout_s) as http,
        contextlib.closing(redis_client.Redis.from_url(redis.url)) as client,
    ):
        answered: list[str] = []
        pin(http, (a, b), answered)
        loop = Loop(http, (a, b), args.interval_ms / 1000)
        state: dict[str, float] = {}

        def operator() -> None:
            time.sleep(args.lead_s)
            state["locks"] = wait_for_moment(loop, client, during=during)
            shutdown_save(redis)
            state["down"] = time.monotonic()
            time.sleep(args.outage_s)
            state["restart"] = time.monotonic()
            redis.start()  # returns once it answers PING
            state["up"] = time.monotonic()

        def stop(answers: list[Answer]) -> bool:
            if "up" not in state:
                return False
            now = time.monotonic()
            good_after = any(x.good and x.start > state["up"] for x in answers)
            return (now - state["up"] > args.after_s and good_after) or (
                now - state["up"] > args.max_wait_s
            )

        thread = threading.Thread(target=operator)
        thread.start()
        loop.run(stop)
        thread.join()
        answered += [x.user_input for x in loop.answers if x.good]
        unavailable = [
            x for x in loop.answers if x.status == 503 and x.error == "session_store_unavailable"
        ]
        others = [x for x in loop.answers if not x.good and x not in unavailable]
        first_good = min(
            (x.end for x in loop.answers if x.good and x.end > state["restart"]), default=None
        )
        latencies = sorted(1000 * x.latency for x in unavailable)
        retry_after = collections.Counter(x.retry_after for x in unavailable)
        return {
            "turns": len(loop.answers),
            "n503": len(unavailable),
            "retry_after": ", ".join(f"{k} ({n})" for k, n in retry_after.items()) or "-",
            "p50_ms": statistics.median(latencies) if latencies else None,
            "max_ms": max(latencies, default=None),
            "others": counts(others),
            "ready_ms": 1000 * (state["up"] - state["restart"]),
            "locked": "yes" if state["locks"] else "no",
            "recovery_ms": None if first_good is None else 1000 * (first_good - state["restart"]),
            "history": history_check(http, answered),
        }


def ms(value: object) -> str:
    return "-" if value is None else f"{value:,.0f}" if isinstance(value, float) else str(value)


def table(header: Sequence[str], keys: Sequence[str], rows: list[dict[str, object]]) -> str:
    lines = ["| round | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for i, row in enumerate(rows, 1):
        lines.append(f"| {i} | " + " | ".join(ms(row[k]) for k in keys) + " |")
    return "\n".join(lines)


def spread(rows: list[dict[str, object]], key: str) -> str:
    values = [float(v) for v in (row[key] for row in rows) if isinstance(v, int | float)]
    if not values:
        return "-"
    return (
        f"{min(values):,.0f} / {statistics.median(values):,.0f} / {max(values):,.0f}"
        f" (of {len(values)})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--rounds", type=int, default=5, help="rounds of each scenario (5)")
    add("--interval-ms", type=float, default=50, help="the client's pause between turns (50)")
    add("--outage-s", type=float, default=2.0, help="how long Redis is down (2)")
    add("--lead-s", type=float, default=1.0, help="seconds of turns before a kill or stop (1)")
    add("--after-s", type=float, default=1.0, help="seconds of turns after it and a good one (1)")
    add("--max-wait-s", type=float, default=60.0, help="the loop's limit after it (60)")
    add("--timeout-s", type=float, default=30.0, help="the client's timeout (30)")
    add("--loop", choices=["asyncio", "trio"], default="asyncio", help="the nodes' event loop")
    add("--only", choices=SCENARIOS, nargs="+", help="these scenarios (default: all)")
    add("--lock-ttl-s", type=float, help=f"the nodes' RedisStore lock_ttl_seconds ({LOCK_TTL:g})")
    args = parser.parse_args(argv)
    for program in ("redis-server", "nginx"):
        if shutil.which(program) is None:
            parser.error(f"{program} is not installed (apt-get install {program})")
    scenarios = args.only or SCENARIOS
    with tempfile.TemporaryDirectory(prefix="chatstream-scale-out-redis-") as folder:
        redis = RedisServer(pathlib.Path(folder))
        redis.start()
        try:
            run(redis, args, scenarios)
        finally:
            redis.stop()


def rounds(
    args: argparse.Namespace, label: str, once: Callable[[], dict[str, object]]
) -> list[dict[str, object]]:
    """``--rounds`` rows of one scenario, each logged as it comes."""
    rows = []
    for i in range(args.rounds):
        rows.append(once())
        log(f"{label} {i + 1}: {rows[-1]}")
    return rows


def run(redis: RedisServer, args: argparse.Namespace, scenarios: list[str]) -> None:
    print(
        f"two nodes ({args.loop}) + Redis + nginx (docs/deployment.md, hash on the cookie), "
        f"mock backend at {FAST['time_per_token_sec']} s/token, {args.rounds} rounds each, "
        f"turn lock TTL {args.lock_ttl_s or LOCK_TTL:g} s\n"
    )
    if "failover" in scenarios:
        rows = rounds(args, "failover", lambda: failover_once(redis, args))
        print("### Failover, one turn after the kill\n")
        print(
            table(
                ["a turn before (ms)", "kill → good answer (ms)", "failed before",
                 "served by the other node", "history intact"],
                ["turn_ms", "failover_ms", "failed", "by_other", "history"],
                rows,
            )
        )  # fmt: skip
        print(f"\nkill → good answer, min / median / max (ms): {spread(rows, 'failover_ms')}")
        print(f"failed requests, min / median / max: {spread(rows, 'failed')}")
        print(f"failed answers, all rounds: {counts_of(rows)}\n")
    for during in (False, True):
        if ("kill-during" if during else "kill-between") not in scenarios:
            continue
        label = f"kill {'during' if during else 'between'}"
        once = functools.partial(continuous_once, redis, args, during=during)
        rows = rounds(args, label, once)
        moment = "during a turn (its turn lock held)" if during else "between two turns"
        print(f"### Failover, a turn every {args.interval_ms:g} ms, killed {moment}\n")
        print(
            table(
                ["turn lock held at the kill", "turns", "failed", "failed answers",
                 "longest gap (ms)", "kill → good answer (ms)", "history intact"],
                ["locked", "turns", "failed", "kinds", "gap_ms", "failover_ms", "history"],
                rows,
            )
        )  # fmt: skip
        print(f"\nlongest gap, min / median / max (ms): {spread(rows, 'gap_ms')}")
        print(f"kill → good answer, min / median / max (ms): {spread(rows, 'failover_ms')}")
        print(f"failed requests, min / median / max: {spread(rows, 'failed')}\n")
    for during in (False, True):
        if ("redis-during" if during else "redis-between") not in scenarios:
            continue
        label = f"redis {'during' if during else 'between'}"
        rows = rounds(args, label, functools.partial(outage_once, redis, args, during=during))
        moment = "during a turn (its turn lock held)" if during else "between two turns"
        print(
            f"### Redis down {args.outage_s:g} s, a turn every {args.interval_ms:g} ms, "
            f"stopped {moment}\n"
        )
        print(
            table(
                ["turn lock held at the stop", "turns", "503 session_store_unavailable",
                 "Retry-After", "503 p50 (ms)", "503 max (ms)", "other failed answers",
                 "restart → PONG (ms)", "restart → good answer (ms)", "history intact"],
                ["locked", "turns", "n503", "retry_after", "p50_ms", "max_ms", "others",
                 "ready_ms", "recovery_ms", "history"],
                rows,
            )
        )  # fmt: skip
        print(f"\n503 latency max, min / median / max (ms): {spread(rows, 'max_ms')}")
        print(f"restart → good answer, min / median / max (ms): {spread(rows, 'recovery_ms')}\n")


def counts_of(rows: list[dict[str, object]]) -> str:
    kinds = [str(row["kinds"]) for row in rows if row["kinds"] != "none"]
    return "; ".join(kinds) or "none"


if __name__ == "__main__":
    main()
