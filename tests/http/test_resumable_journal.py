"""The journal behind resumable streams, on both loops: readers get exactly the events after
the one they name, a stream lingers while it has readers and for the grace period after the
last, and finished journals are let go after their time or beyond their number."""

from __future__ import annotations

import json

import anyio
import pytest

from chatstream.adapters.http.resumable import (
    StreamJournal,
    StreamJournals,
    event_id,
    parse_event_id,
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def decode(chunk: bytes) -> list[tuple[str, str, object]]:
    """(id, event, data) of every event in a chunk."""
    out = []
    for block in chunk.decode().split("\n\n"):
        if not block or block.startswith(":"):
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((fields["id"], fields["event"], json.loads(fields["data"])))
    return out


def test_event_ids_round_trip_and_anything_else_is_refused() -> None:
    assert parse_event_id(event_id("abc", 12)) == ("abc", 12)
    assert parse_event_id(" abc.0 ") == ("abc", 0)
    for bad in ("", "abc", "abc.", ".3", "abc.-1", "abc.x", "abc.1234567890", "abc.٣"):
        with pytest.raises(ValueError, match="not an event id"):
            parse_event_id(bad)


@pytest.mark.anyio
async def test_a_reader_gets_the_events_after_the_one_it_names_then_each_as_it_comes() -> None:
    journal = StreamJournal("m", owner="s")
    for i in range(3):
        journal.append("delta", {"text": str(i)})
    got: list[tuple[str, str, object]] = []

    async def read(after: int) -> None:
        async for chunk in journal.follow(after, keepalive=60):
            got.extend(decode(chunk))

    async with anyio.create_task_group() as tg:
        tg.start_soon(read, 0)
        await anyio.wait_all_tasks_blocked()
        assert [g[0] for g in got] == ["m.1", "m.2"]  # what was there, in one write
        assert journal.readers == 1
        journal.append("done", {"finish_reason": "stop"})
        journal.finish()
    assert got == [
        ("m.1", "delta", {"text": "1"}),
        ("m.2", "delta", {"text": "2"}),
        ("m.3", "done", {"finish_reason": "stop"}),
    ]
    assert journal.readers == 0
    with pytest.raises(RuntimeError):
        journal.append("delta", {"text": "late"})


@pytest.mark.anyio
async def test_a_quiet_stream_sends_keep_alive_comments() -> None:
    journal = StreamJournal("m", owner=None)
    chunks = journal.follow(keepalive=0.01)
    assert (await anext(chunks)).startswith(b": keep-alive")
    journal.append("delta", {"text": "x"})
    assert decode(await anext(chunks)) == [("m.0", "delta", {"text": "x"})]
    await chunks.aclose()
    assert journal.readers == 0


@pytest.mark.anyio
async def test_linger_ends_after_the_grace_without_a_reader_or_with_the_stream() -> None:
    journal = StreamJournal("m", owner=None)
    assert await journal.linger(0) is False  # 0: at once
    with anyio.fail_after(5):
        assert await journal.linger(0.05) is False

    # A reader that comes within the grace keeps it; the end of the stream ends it.
    async def reader_then_end() -> None:
        chunks = journal.follow(keepalive=60)
        await anext(chunks)  # the reader is in
        await anyio.sleep(0.2)  # longer than the grace
        journal.append("done", {})
        journal.finish()
        async for _ in chunks:
            pass

    journal.append("delta", {"text": "x"})
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader_then_end)
            assert await journal.linger(0.05) is True


@pytest.mark.anyio
async def test_finished_journals_go_after_their_time_or_beyond_their_number() -> None:
    journals = StreamJournals(keep_sec=0.1, keep_finished=2)
    running = journals.open("running", owner=None)
    for name in ("a", "b", "c"):
        journals.close(journals.open(name, owner=None))
    assert journals.get("a") is None  # the oldest of three finished, beyond two
    assert journals.get("b") is not None and journals.get("c") is not None
    await anyio.sleep(0.15)
    assert journals.get("b") is None and journals.get("c") is None
    assert journals.get("running") is running and len(journals) == 1  # running ones stay
