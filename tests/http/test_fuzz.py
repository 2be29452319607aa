"""Hypothesis fuzz of whole requests (route, method, query, headers, cookies, body and how it is
sent) against one real server process per event loop, under uvicorn (asyncio) and hypercorn
(trio).

``test_bad_input.py`` pins every known hostile body to its exact 4xx code, and fuzzes JSON
values posted well-formed with a correct ``Content-Type``. This module fuzzes what those cases
leave fixed, to find the input nobody thought of:

* bodies shaped like each route's (``/chat_stream`` turns with ``generation_params``, OpenAI
  ``messages``, feedback with real message ids, parameter sets), with every field's value
  fuzzed over every JSON type: huge ints (also past Python's 4300-digit parsing limit),
  non-finite and extreme floats, lone surrogates in strings and keys, deep-ish nesting;
* the same JSON sent in other encodings (raw lone surrogates as invalid UTF-8, UTF-16, UTF-32,
  a BOM), truncated, with trailing garbage, over the size limit, in one piece or chunked;
* bodies that are not JSON at all: random bytes, forms, multipart, Python literals;
* fuzzed ``Content-Type`` and ``Accept`` (which picks Server-Sent Events), query strings,
  the agent credential header, random extra headers (duplicates included), and ``Cookie``
  headers carrying the real session's cookie, tampered copies of it, cookies validly signed
  for unknown sessions or with the wrong key or clock, and junk;
* every route of the API with its own method, another method, and paths that do not exist.

Whatever arrives, the server must answer a 2xx or a 4xx (never a 5xx, never a dropped
connection), an accepted stream must end without an error event (a failure in the model on a
request the server accepted is a 500 by another name), a refused body on a JSON route must
say why in JSON, the process must stay alive and log no traceback, and after each request and
at the end the engine must be idle: nothing running, nothing waiting, ``/health`` 200.
Examples are derandomized, so CI runs the same requests every time.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatstream.adapters.http.sessions import SessionCookie, new_session_id

from .conftest import Server, ServerFactory

SECRET_KEY = "test secret"  # tests.http.apps.mock_app's
COOKIE = "chatstream_session"
AUTH_HEADER = "X-ChatStream-Auth-Header"
MONITOR_TOKEN = "monitor-token-123"
PASS_PHRASE = "open sesame"
MAX_BODY = 8192

ROLES = {
    "user": {"apis": {"allow": "all", "auth_method": "nothing", "use_session": True}},
    "developer": {
        "apis": {
            "allow": "all",
            "auth_method": "ui_pass_phrase",
            "ui_pass_phrase": PASS_PHRASE,
            "use_session": True,
            "enable_dev_tool": True,
        }
    },
    "monitor": {
        "apis": {
            "allow": ["get_load", "metrics", "chat_stream", "openai", "get_history"],
            "auth_method": "header_phrase",
            "header_phrase": MONITOR_TOKEN,
            "use_session": False,
        }
    },
}
SERVER_OPTIONS = {
    "client_roles": ROLES,
    # The user's input back, at once; short replies, a small context.
    "mock_params": {"type": "echo", "time_per_token_sec": 0},
    "max_new_tokens": 16,
    "context_len": 512,
}

ROUTES: list[tuple[str, str]] = [
    ("POST", "/chat_stream"),
    ("POST", "/set_generation_params"),
    ("POST", "/set_feedback"),
    ("POST", "/clear_context"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/get_generation_params"),
    ("GET", "/get_history"),
    ("GET", "/get_prompt"),
    ("GET", "/get_load"),
    ("GET", "/get_resource_usage"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/mock"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("GET", "/version"),
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/chatstream.js"),
]
BODY_ROUTES = [
    "/chat_stream",
    "/set_generation_params",
    "/set_feedback",
    "/v1/chat/completions",
    "/tokenize",
    "/detokenize",
]
UNKNOWN_PATHS = ["/nope", "/chat_stream/", "/v1/chat/completions/x", "/v1", "/get_load.json"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]

FIELD_NAMES = [
    "user_input",
    "regenerate",
    "generation_params",
    "stream",
    "temperature",
    "top_p",
    "top_p_value",
    "top_k",
    "top_k_value",
    "seed",
    "stop",
    "max_new_tokens",
    "repetition_penalty",
    "repetition_penalty_method",
    "ignore_eos",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "model",
    "stream_options",
    "include_usage",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "form_data",
    "message_id",
    "is_like",
    "prompt",
    "tokens",
    "add_generation_prompt",
    "add_special_tokens",
]


# ---------------------------------------------------------------------- JSON values


@dataclass(frozen=True)
class Raw:
    """A JSON number written as it is: text ``json.dumps`` cannot produce."""

    text: str


def dump(value: object, *, ensure_ascii: bool = True) -> str:
    """``value`` as JSON text, with each :class:`Raw` written verbatim."""
    raws: list[str] = []

    def mark(item: object) -> str:
        assert isinstance(item, Raw), item
        raws.append(item.text)
        return f"@@raw{len(raws) - 1}@@"

    text = json.dumps(value, ensure_ascii=ensure_ascii, default=mark)
    for index, raw in enumerate(raws):
        text = text.replace(f'"@@raw{index}@@"', raw, 1)
    return text


def pick(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``options``, each ``(weight, strategy)`` chosen in proportion to its weight.

    ``st.one_of`` chooses near evenly however often a strategy is repeated in it.
    """
    chosen = [strategy for weight, strategy in options for _ in range(weight)]
    return st.integers(0, len(chosen) - 1).flatmap(chosen.__getitem__)


# Every code point, lone surrogates included (what JSON's \\u escapes can carry).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
WORDS = st.sampled_from(
    [
        "",
        " ",
        "hi",
        "hello world",
        PASS_PHRASE,
        "sse",
        "user",
        "assistant",
        "system",
        "tool",
        "text",
        "multiplicative",
        "subtractive",
        "mock",
        "こんにちは",
        "a\x00b",
        "\r\n",
        "<::EOS::>",
        "<::ERROR::>",
        "data: [DONE]\n\n",
        "\U0001f600",
    ]
)
# Every character but the surrogates: control characters, NUL, every plane.
CHARACTERS = st.text(st.characters(), max_size=12)
PLAIN_TEXT = pick((2, WORDS), (1, CHARACTERS))
# A value's text: now and then with a lone surrogate (ANY_TEXT holds them in most strings).
TEXT = pick((8, PLAIN_TEXT), (1, ANY_TEXT))
EDGE_INTS = st.sampled_from(
    [0, 1, -1, 2, 16, 511, 512, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**100]
)
EDGE_FLOATS = st.sampled_from(
    [0.0, -0.0, 1e-5, 1e-4, 0.5, 1.0, 1.0000001, 5e-324, 1.7976931348623157e308]
)
RAW_NUMBERS = st.sampled_from(
    [
        "9" * 4301,  # past int_max_str_digits: json.loads raises ValueError
        "-" + "1" * 5000,
        "1e999",
        "-1e999",
        "1" + "0" * 400 + ".5",
        "0e-99999",
        "-0",
        "1E+2",
    ]
).map(Raw)
SCALARS: st.SearchStrategy[object] = (
    st.none()
    | st.booleans()
    | st.integers()
    | EDGE_INTS
    | st.floats()
    | EDGE_FLOATS
    | RAW_NUMBERS
    | TEXT
)
KEYS = st.sampled_from(FIELD_NAMES) | ANY_TEXT
VALUES: st.SearchStrategy[object] = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=10,
)


@st.composite
def nested(draw: st.DrawFn) -> object:
    """A value inside 20 to 40 levels of arrays and objects (the limit is 32)."""
    value: object = draw(SCALARS)
    for _ in range(draw(st.integers(20, 40))):
        value = [value] if draw(st.booleans()) else {draw(KEYS): value}
    return value


def maybe(realistic: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """A plausible value nine times in ten, else anything: a body of several fields is then
    often valid enough to be served, not refused for its first bad field."""
    return pick((9, realistic), (1, VALUES))


PARAM_VALUES: dict[str, st.SearchStrategy[object]] = {
    "temperature": maybe(st.floats(0, 2) | st.integers(0, 2)),
    "top_p": maybe(st.floats(0, 1)),
    "top_p_value": maybe(st.floats(0, 1)),
    "top_k": maybe(st.integers(-1, 100) | st.none()),
    "top_k_value": maybe(st.integers(-1, 100) | st.none()),
    "seed": maybe(st.integers(-1, 2**64) | st.none()),
    "max_new_tokens": maybe(st.integers(0, 600)),
    "repetition_penalty": maybe(st.floats(-2, 3) | st.none()),
    "repetition_penalty_method": maybe(st.sampled_from(["multiplicative", "subtractive", "x"])),
    "stop": maybe(TEXT | st.lists(PLAIN_TEXT, max_size=18) | st.text(min_size=250, max_size=260)),
    "ignore_eos": maybe(st.booleans()),
}
PARAMS = pick(
    (4, st.fixed_dictionaries({}, optional=PARAM_VALUES)),
    (1, st.dictionaries(KEYS, VALUES, max_size=4)),
)
CONTENT = maybe(
    TEXT
    | st.lists(
        st.fixed_dictionaries(
            {"type": maybe(st.just("text")), "text": maybe(TEXT)},
            optional={"image_url": VALUES},
        ),
        max_size=3,
    )
)
MESSAGE = maybe(
    st.fixed_dictionaries(
        {
            "role": maybe(
                pick(
                    (6, st.sampled_from(["system", "user", "assistant"])),
                    (1, st.sampled_from(["tool", "developer", "User"])),
                )
            ),
            "content": CONTENT,
        },
        optional={"name": TEXT},
    )
)
USER_MESSAGE = st.fixed_dictionaries({"role": st.just("user"), "content": CONTENT})
CONVERSATION = pick(
    (6, st.tuples(st.lists(MESSAGE, max_size=3), USER_MESSAGE).map(lambda t: [*t[0], t[1]])),
    (1, st.lists(MESSAGE, max_size=4)),
)
TURN = st.fixed_dictionaries(
    {"user_input": maybe(TEXT)},
    optional={
        "regenerate": maybe(st.booleans()),
        "generation_params": maybe(PARAMS),
        "stream": maybe(st.just("sse")),
    },
)
COMPLETION = st.fixed_dictionaries(
    {"messages": maybe(CONVERSATION), "stream": maybe(st.booleans())},
    optional={
        "model": maybe(st.just("mock")),
        "stream_options": maybe(
            st.fixed_dictionaries({}, optional={"include_usage": maybe(st.booleans())})
        ),
        "max_tokens": maybe(st.integers(-1, 600)),
        "max_completion_tokens": maybe(st.integers(-1, 600)),
        "n": maybe(pick((4, st.just(1)), (1, st.integers(0, 2)))),
        **{name: PARAM_VALUES[name] for name in ("temperature", "top_p", "seed", "stop")},
    },
)
TOKENIZE = st.fixed_dictionaries(
    {},
    optional={
        "prompt": maybe(TEXT),
        "messages": maybe(CONVERSATION),
        "add_generation_prompt": maybe(st.booleans()),
        "add_special_tokens": maybe(st.booleans()),
        "model": maybe(st.just("mock")),
    },
)
# Code points, the mock's piece ids above them, and ids no tokenizer has.
TOKEN_IDS = st.integers(-1, 0x110010) | st.sampled_from([0, 0xD800, 0x10FFFF]) | EDGE_INTS
DETOKENIZE = st.fixed_dictionaries(
    {"tokens": maybe(st.lists(TOKEN_IDS, max_size=20))},
    optional={"model": maybe(st.just("mock"))},
)
# Deep-ish nesting, around the limit of 32 levels.
NESTED = st.dictionaries(KEYS, nested(), min_size=1, max_size=2)
ANY_OBJECT = st.dictionaries(KEYS, VALUES, max_size=6)


def feedback_bodies(message_ids: list[str]) -> st.SearchStrategy[object]:
    return st.fixed_dictionaries(
        {},
        optional={
            "message_id": maybe(st.sampled_from(message_ids) | TEXT),
            "is_like": maybe(st.booleans()),
            "form_data": maybe(TEXT | st.dictionaries(TEXT, TEXT, max_size=3)),
        },
    )


# ---------------------------------------------------------------------- bodies as bytes

# Well-formed JSON seven times in eight.
ENCODINGS = [
    *["ascii"] * 4,
    *["utf-8"] * 4,
    "utf-16",
    "utf-32",
    "utf-8-sig",
    "padded",
    "truncated",
    "garbage",
]
NOT_JSON = st.binary(max_size=200) | st.sampled_from(
    [
        b"",
        b" \r\n",
        b"\xef\xbb\xbf",
        b"{",
        b"}",
        b"null",
        b"[]",
        b"0",
        b'"x"',
        b"{'user_input': 'hi'}",
        b"user_input=hi&stream=sse",
        b'--zz\r\nContent-Disposition: form-data; name="user_input"\r\n\r\nhi\r\n--zz--\r\n',
        b'{"user_input": "a", "user_input": 5}',
        b'{"user_input": "hi"} {"user_input": "again"}',
        b"\xff\xfe{\x00}\x00",
        b'{"user_input": "\\ud83d\\ude00"}',
        b'{"user_input": "\\u0000"}',
        b'{"user_input": "\\x41"}',
        b'{"user_input": "hi", "generation_params": {"seed": NaN}}',
        b'{"user_input": "hi"' + b" " * 100,
    ]
)
# Around the size limit; under it, a valid turn that echoes a single 8 KB word.
BIG = st.integers(MAX_BODY - 40, MAX_BODY + 40).map(
    lambda size: json.dumps({"user_input": "a" * (size - 17)}).encode()
)


@st.composite
def encoded(draw: st.DrawFn, values: st.SearchStrategy[object]) -> bytes:
    """A JSON value as a body: well-formed, in another encoding, or broken."""
    value = draw(values)
    how = draw(st.sampled_from(ENCODINGS))
    text = dump(value, ensure_ascii=how == "ascii")
    if how in ("utf-16", "utf-32", "utf-8-sig"):
        return text.encode(how, "surrogatepass")
    # Lone surrogates written raw: bytes that are not UTF-8.
    data = text.encode("utf-8", "surrogatepass")
    if how == "truncated":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if how == "garbage":
        return data + draw(st.sampled_from([b"}", b",", b"x", b"\x00", b" {}", b"\xff"]))
    if how == "padded":
        return b" \n\t" + data + b"\r\n"
    return data


def bodies_for(path: str, message_ids: list[str]) -> st.SearchStrategy[bytes]:
    shapes: dict[str, st.SearchStrategy[object]] = {
        "/chat_stream": TURN,
        "/set_generation_params": PARAMS,
        "/set_feedback": feedback_bodies(message_ids),
        "/v1/chat/completions": COMPLETION,
        "/tokenize": TOKENIZE,
        "/detokenize": DETOKENIZE,
    }
    own = shapes.get(path, ANY_OBJECT)
    anything = st.one_of(*shapes.values(), ANY_OBJECT, VALUES)
    return pick(
        (12, encoded(own)), (1, encoded(anything)), (1, encoded(NESTED)), (1, NOT_JSON), (1, BIG)
    )


# ---------------------------------------------------------------------- headers

# What h11 lets a header value hold (no NUL, no whitespace but inner spaces and tabs),
# obs-text included.
HEADER_CHARS = [chr(c) for c in [*range(0x21, 0x7F), *range(0x80, 0x100)]]
HEADER_TEXT = st.text(st.sampled_from([*HEADER_CHARS, " ", "\t"]), max_size=40).map(
    lambda text: text.strip(" \t")
)
TOKEN = st.text(
    st.sampled_from("-!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzXY"),
    min_size=1,
    max_size=12,
)
# Headers that frame the request or the connection: fuzzing them tests h11, not the app.
FRAMING = {
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "upgrade",
    "expect",
    "te",
    "trailer",
    "keep-alive",
    "http2-settings",
}
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=utf-16",
        "application/JSON;;;",
        "text/plain",
        "text/event-stream",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=zz",
        "*/*",
        "",
    ]
)
ACCEPTS = st.sampled_from(
    [
        "text/event-stream",
        "text/event-stream;q=0",
        "TEXT/EVENT-STREAM",
        "application/json, text/event-stream",
        "application/json",
        "text/*",
        "*/*",
        "",
    ]
)


def cookie_values(real: str) -> list[str]:
    """The real session's cookie, and forgeries of it."""
    session_id = SessionCookie(SECRET_KEY).unsign(real)
    assert session_id is not None
    last = "A" if real[-1] != "A" else "E"

    def signed(key: str, value: str, clock: float | None = None) -> str:
        if clock is None:
            return SessionCookie(key).sign(value)
        return SessionCookie(key, clock=lambda: clock).sign(value)

    return [
        real,
        real[:-1] + last,  # a bad signature
        real[:5] + ("x" if real[5] != "x" else "y") + real[6:],  # another id, same signature
        real.replace(".", "..", 1),
        real + "=",
        real.upper(),
        real.split(".")[0],
        signed(SECRET_KEY, new_session_id()),  # validly signed, no such session
        signed(SECRET_KEY, "A" * 128),
        signed(SECRET_KEY, "-"),
        signed(SECRET_KEY, "A" * 129),  # longer than a cookie id may be
        signed(SECRET_KEY, session_id, clock=1.0),  # the real one, too old
        signed(SECRET_KEY, session_id, clock=time.time() + 3600),  # from the future
        signed("another key", session_id),
        "",
        '"quoted"',
    ]


@st.composite
def cookie_headers(draw: st.DrawFn, real: str) -> str:
    if draw(st.integers(0, 4)) == 0:
        return draw(HEADER_TEXT)
    names = st.sampled_from([COOKIE, COOKIE, COOKIE.upper(), "other"]) | TOKEN
    values = st.sampled_from(cookie_values(real)) | HEADER_TEXT.filter(lambda v: ";" not in v)
    pairs = draw(st.lists(st.tuples(names, values), min_size=1, max_size=3))
    separator = draw(st.sampled_from(["; ", ";", " ; ", ";;"]))
    return separator.join(f"{name}={value}" for name, value in pairs)


@st.composite
def header_lists(draw: st.DrawFn, real_cookie: str) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[str, str]] = []
    if draw(st.booleans()):
        headers.append(("content-type", draw(CONTENT_TYPES | HEADER_TEXT)))
    if draw(st.booleans()):
        headers.append(("accept", draw(ACCEPTS | HEADER_TEXT)))
    if draw(st.booleans()):
        headers.append(("cookie", draw(cookie_headers(real_cookie))))
    if draw(st.integers(0, 5)) == 0:
        headers.append((AUTH_HEADER, draw(st.just(MONITOR_TOKEN) | HEADER_TEXT)))
    names = st.sampled_from(["content-type", "accept", "cookie", AUTH_HEADER, "origin"]) | TOKEN
    extra = st.tuples(names.filter(lambda name: name.lower() not in FRAMING), HEADER_TEXT)
    headers += draw(st.lists(extra, max_size=3))
    return [(name.encode(), value.encode("latin-1")) for name, value in headers]


# ---------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Fuzzed:
    """One request: what a failing example prints is enough to send it again."""

    method: str
    url: str
    headers: list[tuple[bytes, bytes]]
    body: bytes | None
    #: Sent with chunked transfer encoding, in these pieces, instead of with a length.
    chunks: tuple[bytes, ...] | None = None

    def content(self) -> bytes | Iterator[bytes] | None:
        if self.chunks is not None:
            return iter(self.chunks)
        return self.body


@st.composite
def requests(draw: st.DrawFn, message_ids: list[str], real_cookie: str) -> Fuzzed:
    kind = draw(st.integers(0, 9))
    if kind < 6:  # a route that takes a body, with its own method
        path = draw(st.sampled_from(BODY_ROUTES))
        method = "POST"
    elif kind < 8:  # any route, with its own method
        method, path = draw(st.sampled_from(ROUTES))
    else:  # any method, maybe on no route at all
        path = draw(st.sampled_from([*(path for _, path in ROUTES), *UNKNOWN_PATHS]))
        method = draw(st.sampled_from(METHODS))
    body: bytes | None = None
    if method == "POST" or draw(st.integers(0, 3)) == 0:
        body = draw(bodies_for(path, message_ids))
    query = draw(
        st.none()
        | st.sampled_from(["stream=sse", "stream=SSE", "stream=", "stream=sse&stream=x"])
        | st.text(st.sampled_from("abcs=&%;+?/09AFZ\u00e9"), max_size=16)
    )
    chunks = None
    if body and method != "HEAD" and draw(st.integers(0, 3)) == 0:
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        edges = [0, *cuts, len(body)]
        chunks = tuple(body[a:b] for a, b in itertools.pairwise(edges) if b > a)
    return Fuzzed(
        method=method,
        url=path if query is None else f"{path}?{query}",
        headers=draw(header_lists(real_cookie)),
        body=body,
        chunks=chunks,
    )


# ---------------------------------------------------------------------- checks


def read_all(response: httpx.Response, timeout: float = 15.0) -> bytes:
    """The whole body, failing if it takes longer than ``timeout`` in all."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        assert time.monotonic() < deadline, "the response did not end in time"
    return b"".join(chunks)


def idle(server: Server, timeout: float = 5.0) -> dict[str, Any]:
    """``/health``'s body once nothing runs or waits (the last stream may still be ending)."""
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while True:
            response = client.get("/health")
            health: dict[str, Any] = response.json()
            if response.status_code == 200 and (health["running"], health["waiting"]) == (0, 0):
                return health
            assert time.monotonic() < deadline, ("not idle", response.status_code, health)
            time.sleep(0.02)


def echoed(request: Fuzzed, marker: str) -> bool:
    """Whether the body carries ``marker`` (the echo mock sends the user's input back)."""
    try:
        parsed = json.loads(request.body or b"")
    except ValueError:
        return True  # refused anyway
    return marker in json.dumps(parsed, ensure_ascii=False)


def check_answer(request: Fuzzed, response: httpx.Response, body: bytes) -> None:
    status = response.status_code
    content_type = response.headers.get("content-type", "")
    path = request.url.split("?")[0]
    if 300 <= status < 400:
        # The one redirect there is: Starlette's redirect_slashes (/chat_stream/ to /chat_stream).
        location = httpx.URL(response.headers["location"]).path
        assert status == 307 and location == path.rstrip("/"), (status, location)
    else:
        assert 200 <= status < 300 or 400 <= status < 500, status
    text = body.decode("utf-8", "replace")
    if status == 200 and request.method == "POST" and path in BODY_ROUTES:
        # An accepted stream ends as it should, not with a failure in the model (a 500 by
        # another name).
        if content_type.startswith("text/plain"):
            # Empty when a stop string cuts the reply before its first character.
            assert text == "" or text.endswith("<::EOS::>"), text[-500:]
            assert "<::ERROR::>" not in text or echoed(request, "<::ERROR::>"), text[-500:]
        elif content_type.startswith("text/event-stream") and path == "/chat_stream":
            assert "\nevent: error\n" not in f"\n{text}", text[-500:]
            assert "\nevent: done\n" in f"\n{text}", text[-500:]
        elif content_type.startswith("text/event-stream"):
            assert '"server_error"' not in text, text[-500:]
            assert text.endswith("data: [DONE]\n\n"), text[-500:]
        else:
            assert content_type.startswith("application/json"), content_type
            json.loads(body)
    if 400 <= status < 500 and request.method == "POST" and path in BODY_ROUTES:
        # A refused body says why, in the original's shape or OpenAI's.
        assert content_type.startswith("application/json"), content_type
        answer = json.loads(body)
        assert isinstance(answer, dict) and "error" in answer, answer


# ---------------------------------------------------------------------- the fuzz


def test_fuzzed_requests_get_2xx_or_4xx_and_leave_the_server_idle(
    start_server: ServerFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    server = start_server(options=SERVER_OPTIONS, http={"max_body_bytes": MAX_BODY})
    logged: list[str] = []

    def server_log() -> str:
        logged.append(capfd.readouterr().err)
        return "".join(logged)

    # A real session with a few turns, so cookies and message ids can name something real.
    with server.client() as setup:
        for text in ("hello", "again"):
            with setup.stream("POST", "/chat_stream", json={"user_input": text}) as turn:
                assert turn.status_code == 200
                assert read_all(turn).endswith(b"<::EOS::>")
        real_cookie = setup.cookies[COOKIE]
        message_ids = [m["id"] for m in setup.get("/get_history").json()["messages"]]
    assert len(message_ids) == 4

    client = httpx.Client(base_url=server.base_url, timeout=10)

    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=requests(message_ids, real_cookie))
    def fuzz(request: Fuzzed) -> None:
        client.cookies.clear()  # only the request's own Cookie headers
        try:
            with client.stream(
                request.method, request.url, headers=request.headers, content=request.content()
            ) as response:
                body = read_all(response)
                check_answer(request, response, body)
            assert server.process.poll() is None, "the server died"
            idle(server)
        except (AssertionError, httpx.HTTPError) as error:
            alive = server.process.poll() is None
            raise AssertionError(
                f"{request!r}\nfailed: {error!r}\nserver alive: {alive}\n"
                f"server stderr:\n{server_log()[-8000:]}"
            ) from error

    try:
        fuzz()
    finally:
        client.close()

    health = idle(server)
    assert health["status"] == "ok"
    with server.client() as client:
        load = client.get("/get_load").json()["chatstream_workers"][0]
        assert (load["processing"], load["waiting"]) == (0, 0)
        # Still serving: a plain turn gets its reply.
        with client.stream("POST", "/chat_stream", json={"user_input": "still there?"}) as ok:
            assert ok.status_code == 200
            assert "still there?" in read_all(ok).decode()
    assert server.process.poll() is None
    log = server_log()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-8000:]
