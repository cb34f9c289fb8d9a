"""Lesson 09 exercises: a heartbeat client that notices a stopped server, and finding the
server that leaks sockets in a table of TCP states."""
from __future__ import annotations

import contextlib
import socket
import threading
import time

from lessons.exercises import Exercise
from lessons.kit.adversary import connected_pair
from lessons.kit.check import check, describe, expect_value, scenario

DEADLINE = 1.5   # a scenario's cut-off; the answer needs half a second for each


# --- The common first attempts. ---

def naive_heartbeat(sock, interval=0.2, deadline=0.5, duration=2.0):
    """One recv() per PING, taken as the whole answer, with no deadline of its own."""
    end = time.monotonic() + duration
    while time.monotonic() < end:
        sock.sendall(b"PING\n")
        if sock.recv(1024) != b"PONG\n":   # waits as long as the socket lets it: maybe for ever
            return "closed"
        time.sleep(interval)
    return "alive"


def naive_leaking_servers(rows, min_close_wait=3):
    """Any CLOSE_WAIT that touches a server's port is taken for that server's leak."""
    listening = {row["local"] for row in rows if row["state"] == "LISTEN"}
    return sorted({port for row in rows if row["state"] == "CLOSE_WAIT"
                   for port in (row["local"], row["remote"]) if port in listening})


# --- heartbeat: a thread plays the server on the far end of a real connection. ---
# A stopped process looks like this from the socket: its kernel keeps the connection
# and takes our bytes, but nothing reads them and nothing answers.

def _server(sock: socket.socket, done: threading.Event, behaviour: str) -> None:
    sock.settimeout(0.05)
    buffer, answered = b"", 0
    with contextlib.suppress(OSError):
        while not done.is_set():
            if behaviour == "stops after 2" and answered == 2:
                done.wait(0.05)            # paused: reads nothing, answers nothing
                continue
            if behaviour == "chatty":
                sock.sendall(b"NEWS all is well\n")
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                continue
            if not chunk:
                return
            buffer += chunk
            while b"PING\n" in buffer:
                buffer = buffer.replace(b"PING\n", b"", 1)
                answered += 1
                if behaviour == "closes":
                    sock.shutdown(socket.SHUT_RDWR)
                    return
                if behaviour == "in pieces":
                    sock.sendall(b"NEWS hello\nPO")
                    time.sleep(0.03)
                    sock.sendall(b"NG\n")
                elif behaviour != "chatty":
                    sock.sendall(b"PONG\n")


def _beats(behaviour: str, expected: str, interval: float, deadline: float, duration: float):
    call = f"heartbeat(sock, interval={interval:g}, deadline={deadline:g}, duration={duration:g})"

    @scenario(call, describe(expected))
    def run(fn, guard):
        with connected_pair() as (ours, theirs):
            guard.add(ours)
            done = threading.Event()
            peer = threading.Thread(target=_server, args=(theirs, done, behaviour),
                                    name="heartbeat-peer", daemon=True)
            peer.start()
            try:
                return expect_value(call, expected, lambda: fn(ours, interval, deadline, duration))
            finally:
                done.set()
                peer.join(2.0)
    return run


HEARTBEAT = {
    "a live server": _beats("live", "alive", 0.1, 1.0, 0.4),
    "PONG in pieces, after another line": _beats("in pieces", "alive", 0.1, 1.0, 0.3),
    "a server that stops answering (as after SIGSTOP)":
        _beats("stops after 2", "dead", 0.1, 0.3, 30),
    "a chatty server that never says PONG": _beats("chatty", "dead", 0.1, 0.3, 30),
    "a server that hangs up": _beats("closes", "closed", 0.1, 0.3, 30),
}


# --- leaking_servers: tables of sockets, as lessons.kit.states reads them. ---

def _row(local, remote, state):
    return {"local": local, "remote": remote, "state": state}


def _both_ends(server, client, server_state, client_state):
    return [_row(server, client, server_state), _row(client, server, client_state)]


def _table(*parts):
    return [row for part in parts for row in (part if isinstance(part, list) else [part])]


TABLES = {
    "a healthy server (TIME_WAIT is not a leak)": (_table(
        _row(9000, None, "LISTEN"), _both_ends(9000, 50001, "ESTABLISHED", "ESTABLISHED"),
        _row(50002, 9000, "TIME_WAIT"), _row(50003, 9000, "TIME_WAIT"),
        _row(9000, 50004, "TIME_WAIT"), _row(9000, 50005, "TIME_WAIT")), []),
    "the tutorial's select loop, three clients gone": (_table(
        _row(9000, None, "LISTEN"), *[_both_ends(9000, port, "CLOSE_WAIT", "FIN_WAIT2")
                                      for port in (50001, 50002, 50003)]), [9000]),
    "clients that never close (their leak, not the server's)": (_table(
        _row(9000, None, "LISTEN"), *[_both_ends(9000, port, "FIN_WAIT2", "CLOSE_WAIT")
                                      for port in (50001, 50002, 50003)]), []),
    "one CLOSE_WAIT in passing": (_table(
        _row(9000, None, "LISTEN"), _both_ends(9000, 50001, "CLOSE_WAIT", "FIN_WAIT2"),
        _both_ends(9000, 50002, "ESTABLISHED", "ESTABLISHED")), []),
    "two servers, one leaks": (_table(
        _row(9000, None, "LISTEN"), _row(9001, None, "LISTEN"),
        _both_ends(9000, 50001, "ESTABLISHED", "ESTABLISHED"), _row(50002, 9000, "TIME_WAIT"),
        *[_both_ends(9001, port, "CLOSE_WAIT", "FIN_WAIT2")
          for port in (50010, 50011, 50012, 50013)]), [9001]),
    "two leakers, listed in order": (_table(
        _row(9200, None, "LISTEN"),
        *[_both_ends(9200, port, "CLOSE_WAIT", "FIN_WAIT2") for port in (50020, 50021, 50022)],
        _row(9100, None, "LISTEN"),
        *[_both_ends(9100, port, "CLOSE_WAIT", "FIN_WAIT2") for port in (50030, 50031, 50032)]),
        [9100, 9200]),
}


def _finds(rows, expected):
    call = f"leaking_servers(<{len(rows)} rows>, min_close_wait=3)"

    @scenario(call, describe(expected))
    def run(fn, guard):
        return expect_value(call, expected, lambda: fn([dict(row) for row in rows], 3))
    return run


LEAKS = {title: _finds(rows, expected) for title, (rows, expected) in TABLES.items()}


def check_heartbeat(fn):
    """Check a heartbeat(sock, interval, deadline, duration) against live, slow, stopped,
    chatty and closing servers."""
    return check("heartbeat", fn, HEARTBEAT, deadline=DEADLINE)


def check_leaking_servers(fn):
    """Check leaking_servers(rows, min_close_wait) on tables of healthy and leaking servers."""
    return check("leaking_servers", fn, LEAKS)


EXERCISES = [
    Exercise("09_dead_peers", "heartbeat", check=check_heartbeat, naive=naive_heartbeat,
             todo="PING every interval; wait for a PONG line until sent time + deadline; "
                  "b'' or RST: closed"),
    Exercise("09_dead_peers", "leaking_servers", check=check_leaking_servers,
             naive=naive_leaking_servers,
             todo="find the LISTEN ports; count CLOSE_WAIT rows whose LOCAL port is one of them."),
]
