"""Lesson 04: what a non-blocking socket does, and what the polling loop costs."""
from __future__ import annotations

from lessons.kit import adversary, running
from lessons.kit.transcript import READY, SERVER, Transcript
from tests.conftest import lesson

polling = lesson("04_nonblocking")
echo = lesson("02_echo")


def test_would_block_examples():
    assert polling.would_block_examples() == {
        "accept() with no client waiting": "BlockingIOError (EAGAIN)",
        "recv() with nothing arrived": "BlockingIOError (EAGAIN)",
        "send() once the buffers are full": "BlockingIOError (EAGAIN)",
        "a send() took only part of the megabyte first": True,
        "recv() after the peer's FIN": "b''",
    }


def test_the_loop_keeps_trying_while_everyone_is_idle():
    counters = polling.Counters()

    def serve(listener, stop, log):
        polling.serve(listener, stop, log, nap=0, counters=counters)

    log = Transcript()
    with running(serve, log=log) as server:
        with adversary.silent(server.address), adversary.silent(server.address):
            assert echo.echo(server.address, b"hi") == b"hi"
            passes = counters.passes
            assert log.wait_for(lambda evs: counters.passes > passes + 1000, timeout=5)
    # Nearly every pass found nothing: that is the cost of polling.
    assert counters.idle_passes > 0.9 * counters.passes
    busy = [e for e in log.events(SERVER) if e.kind == READY]
    assert busy and all(e.detail.startswith("tried all; ") for e in busy)


def test_idle_cost_reports_a_measurement():
    result = polling.idle_cost(nap=0.001, clients=3, seconds=0.1)
    assert set(result) == {"cpu per second", "passes per second"}
    assert result["passes per second"] > 0


def test_output_limit_stops_reading_from_a_client_that_does_not_read():
    import socket
    with running(polling.serve) as server, socket.create_connection(server.address, timeout=5) as hog:
        hog.setblocking(False)
        sent = 0
        try:
            while sent < 256 * 1024 * 1024:
                sent += hog.send(b"h" * (1 << 20))
        except BlockingIOError:
            pass
        # It stopped reading us long before 256 MB: the server holds at most its limit.
        assert sent < 64 * 1024 * 1024
