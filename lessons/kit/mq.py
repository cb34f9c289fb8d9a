"""ZeroMQ's basic patterns, each small enough to read at once (lesson 10 runs and explains them).

ZeroMQ (pyzmq) gives a socket that sends whole *messages*, connects before
the other side exists and reconnects after it restarts, queues messages in
memory, and fans them out or spreads them over peers by *pattern*:

    REQ/REP     request/reply (请求/应答): each request gets one reply, in lock-step
    PUB/SUB     publish/subscribe (发布/订阅): every subscriber gets each message on its topic
    PUSH/PULL   a pipeline: each message goes to ONE of the pullers, in turn

What it does not promise: delivery. A subscriber gets nothing published
before its subscription reached the publisher (the "slow joiner"); a full
queue (the high-water mark, HWM) drops messages (PUB) or blocks the sender
(PUSH, REQ); nothing is written to disk; a crash loses what was queued.

Rules kept here, as everywhere in the workbook: only loopback
(``tcp://127.0.0.1:*`` takes a free port, ``inproc://`` stays inside the
process); every receive has a timeout (``RCVTIMEO`` or a poll); every socket
is used by one thread only and closed with linger 0 (close never waits to
deliver); every context is destroyed; every thread is joined.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from typing import Callable, Iterator

import zmq

from .adversary import closed_port

TIMEOUT_MS = 2000    # the longest any receive here waits
POLL_MS = 50         # how often a background loop looks at its stop flag
JOIN_TIMEOUT = 5.0


# --- Plumbing: contexts, sockets, background threads ---

@contextlib.contextmanager
def context() -> Iterator[zmq.Context]:
    """A ZeroMQ context (its I/O thread and sockets), destroyed on exit."""
    ctx = zmq.Context()
    ctx.linger = 0               # every socket made from it: close() drops unsent messages at once
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)    # closes any socket still open, then ends the I/O thread


def open_socket(ctx: zmq.Context, kind: int, timeout_ms: int = TIMEOUT_MS) -> zmq.Socket:
    """A socket whose send and recv give up after timeout_ms (zmq.Again) instead of waiting forever."""
    sock = ctx.socket(kind)
    sock.rcvtimeo = sock.sndtimeo = timeout_ms
    return sock


def bind(sock: zmq.Socket, endpoint: str = "tcp://127.0.0.1:*") -> str:
    """Bind (to a free port by default) and return the endpoint that peers connect to."""
    sock.bind(endpoint)
    return sock.last_endpoint.decode()


@contextlib.contextmanager
def background(body: Callable, *args, name: str = "zmq-service") -> Iterator:
    """Run ``body(ready, stop, *args)`` in a thread; yield what it passes to ``ready()``.

    The body makes its own sockets (a ZeroMQ socket belongs to one thread),
    calls ``ready(value)`` once they are bound, loops until ``stop`` is set,
    and closes them. On exit: stop, join, and raise whatever it raised.
    """
    stop, handoff, errors = threading.Event(), queue.Queue(), []

    def run():
        try:
            body(handoff.put, stop, *args)
        except BaseException as exc:
            errors.append(exc)
            handoff.put(None)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        value = handoff.get(timeout=JOIN_TIMEOUT)
        if errors:
            raise errors[0]
        yield value
    finally:
        stop.set()
        thread.join(JOIN_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"{name} did not stop within {JOIN_TIMEOUT:g} s")
    if errors:
        raise errors[0]


def serve_each(sock: zmq.Socket, stop: threading.Event, handle: Callable[[list], None]) -> None:
    """Call handle(message) for each message on sock until stop: poll, never block."""
    while not stop.is_set():
        if sock.poll(POLL_MS):
            handle(sock.recv_multipart())


# --- REQ/REP: a service that answers ---

def shouter(ready, stop, ctx: zmq.Context, endpoint: str = "tcp://127.0.0.1:*") -> None:
    """REP: answer each request with the same message in capitals, frame by frame."""
    with open_socket(ctx, zmq.REP) as rep:
        ready(bind(rep, endpoint))
        serve_each(rep, stop, lambda frames: rep.send_multipart([f.upper() for f in frames]))


def ask(ctx: zmq.Context, endpoint: str, *requests: bytes) -> list[bytes]:
    """REQ: send each request and wait (at most TIMEOUT_MS) for its reply."""
    with open_socket(ctx, zmq.REQ) as req:
        req.connect(endpoint)
        replies = []
        for message in requests:
            req.send(message)
            replies.append(req.recv())   # REQ must recv before it may send again
        return replies


# --- PUB/SUB: a chat room ---

def chat_room(ready, stop, ctx: zmq.Context) -> None:
    """The room: members PUSH posts to its inbox; it PUBlishes each one to every subscriber.

    A post is three frames, [topic, name, text]; the topic is the room's
    name, and a SUB socket receives only the topics it subscribed to.
    """
    with open_socket(ctx, zmq.PULL) as inbox, open_socket(ctx, zmq.PUB) as outbox:
        ready((bind(inbox), bind(outbox)))
        serve_each(inbox, stop, outbox.send_multipart)


class Member:
    """Someone in the chat room: a PUSH socket to post, a SUB socket to listen to one room."""

    def __init__(self, ctx: zmq.Context, endpoints: tuple[str, str], name: str, room: str):
        self.name, self.room = name.encode(), room.encode()
        self.posts = open_socket(ctx, zmq.PUSH)
        self.feed = open_socket(ctx, zmq.SUB)
        self.posts.connect(endpoints[0])
        self.feed.connect(endpoints[1])
        self.feed.subscribe(self.room)   # a prefix: "lobby" would also match "lobby2"

    def join(self, tries: int = 100) -> None:
        """Post empty probes until one comes back: then the subscription is in place.

        Subscribing takes a round trip the SUB socket does not wait for; until
        it reaches the publisher, everything published to us is dropped.
        """
        for _ in range(tries):
            self.posts.send_multipart([self.room, self.name, b""])
            if self.feed.poll(20) and self._probe_came_back():
                return
        raise TimeoutError(f"{self.name.decode()} could not join {self.room.decode()}")

    def _probe_came_back(self) -> bool:
        while self.feed.poll(0):
            _, name, text = self.feed.recv_multipart()
            if name == self.name and not text:
                return True
        return False

    def say(self, text: str) -> None:
        """Post a line to our room."""
        self.posts.send_multipart([self.room, self.name, text.encode()])

    def hear(self) -> str:
        """The next post in our room, skipping probes; zmq.Again after TIMEOUT_MS."""
        while True:
            _, name, text = self.feed.recv_multipart()
            if text:
                return f"{name.decode()}: {text.decode()}"

    def close(self) -> None:
        """Close both sockets."""
        self.posts.close()
        self.feed.close()


# --- PUSH/PULL: spread work over workers ---

def worker(ready, stop, ctx: zmq.Context, tasks: str, results: str, name: str) -> None:
    """PULL a number, PUSH back [name, its square]."""
    with open_socket(ctx, zmq.PULL) as inbox, open_socket(ctx, zmq.PUSH) as outbox:
        inbox.connect(tasks)
        outbox.connect(results)
        ready(name)

        def square(task: list) -> None:
            outbox.send_multipart([name.encode(), b"%d" % int(task[0]) ** 2])

        serve_each(inbox, stop, square)


def spread_work(ctx: zmq.Context, numbers: list[int], workers: int = 3) -> dict[str, list[int]]:
    """Square numbers on ``workers`` workers; return what each worker did, by name.

    PUSH sends each message to the next connected puller in turn. A worker
    that connects late gets nothing of what was already handed out, so we
    wait (with a socket monitor) until every worker's connection is up.
    """
    with open_socket(ctx, zmq.PUSH) as tasks, open_socket(ctx, zmq.PULL) as results, \
            contextlib.ExitStack() as crew:
        monitor = tasks.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            tasks_endpoint, results_endpoint = bind(tasks), bind(results)
            for i in range(workers):
                crew.enter_context(background(worker, ctx, tasks_endpoint, results_endpoint,
                                              f"worker {i + 1}", name=f"worker-{i + 1}"))
            for _ in range(workers):        # one event per worker whose connection is ready
                if not monitor.poll(TIMEOUT_MS):
                    raise TimeoutError("a worker never connected")
                monitor.recv_multipart()
        finally:
            tasks.disable_monitor()
            monitor.close()
        for n in numbers:
            tasks.send(b"%d" % n)
        done: dict[str, list[int]] = {}
        for _ in numbers:
            name, square = results.recv_multipart()
            done.setdefault(name.decode(), []).append(int(square))
        return dict(sorted(done.items()))


# --- What ZeroMQ does not promise ---

def slow_joiner(ctx: zmq.Context, count: int = 100) -> list[int]:
    """Start the subscriber FIRST, then a publisher that sends ``count`` numbered messages
    at once and one more later; return the numbers the subscriber got.

    Connecting happens in the background. Here the subscriber's first try finds
    nobody listening, and it tries again 300 ms later (``RECONNECT_IVL``); on a
    busy network the handshake alone takes that long. The publisher does not
    wait for anyone: what it sends before the subscription arrives is dropped.
    """
    host, port = closed_port()
    endpoint = f"tcp://{host}:{port}"
    with open_socket(ctx, zmq.SUB) as sub:
        sub.reconnect_ivl = 300
        monitor = sub.get_monitor_socket(zmq.EVENT_CONNECT_RETRIED)
        try:
            sub.connect(endpoint)
            sub.subscribe(b"")
            if not monitor.poll(TIMEOUT_MS):    # its first try failed; the next is 300 ms away
                raise TimeoutError("the subscriber never tried to connect")
        finally:
            sub.disable_monitor()
            monitor.close()
        with open_socket(ctx, zmq.PUB) as pub:
            bind(pub, endpoint)
            for i in range(count):
                pub.send_multipart([b"news", b"%d" % i])
            _until_subscribed(pub, sub)
            pub.send_multipart([b"news", b"%d" % count])
            got = []
            while not got or got[-1] != count:
                topic, body = sub.recv_multipart()
                if topic == b"news":
                    got.append(int(body))
            return got


def _until_subscribed(pub: zmq.Socket, sub: zmq.Socket, tries: int = 200) -> None:
    """Publish probes until the subscriber gets one: ZeroMQ's guide calls this synchronising."""
    for _ in range(tries):
        pub.send_multipart([b"probe", b""])
        if sub.poll(20):
            return
    raise TimeoutError("the subscription never arrived")


def late_subscriber(ctx: zmq.Context) -> tuple[list[int], list[int]]:
    """Publish 1-5 before anyone subscribes, then 6-10 once a subscriber is known to be in.

    Returns (what the subscriber got, what it would have needed): the first
    half is lost for good. A publisher keeps no history.
    """
    with open_socket(ctx, zmq.PUB) as pub:
        endpoint = bind(pub)
        for i in range(1, 6):
            pub.send_multipart([b"news", b"%d" % i])   # nobody subscribed: dropped at once
        with open_socket(ctx, zmq.SUB) as sub:
            sub.connect(endpoint)
            sub.subscribe(b"")
            _until_subscribed(pub, sub)
            for i in range(6, 11):
                pub.send_multipart([b"news", b"%d" % i])
            got = []
            while len(got) < 5:
                topic, body = sub.recv_multipart()
                if topic == b"news":
                    got.append(int(body))
    return got, list(range(1, 11))


def full_queue_drops(ctx: zmq.Context, hwm: int = 5, count: int = 1000) -> list[int]:
    """PUB to a subscriber that is not reading: past the high-water mark, messages are dropped.

    Over inproc:// the queue between two sockets holds the sender's SNDHWM
    plus the receiver's RCVHWM messages; the rest vanish, and send() says nothing.
    """
    with open_socket(ctx, zmq.PUB) as pub, open_socket(ctx, zmq.SUB) as sub:
        pub.sndhwm = sub.rcvhwm = hwm       # set before bind/connect: a queue's size is fixed when it is made
        bind(pub, "inproc://full-pub")
        sub.connect("inproc://full-pub")
        sub.subscribe(b"")
        for i in range(count):
            pub.send(b"%d" % i)             # never blocks, never fails
        received = []
        while sub.poll(100):
            received.append(int(sub.recv()))
        return received


def full_queue_blocks(ctx: zmq.Context, hwm: int = 5) -> tuple[int, str]:
    """PUSH to a puller that is not reading: at the high-water mark, send() blocks.

    With a send timeout it gives up with zmq.Again instead. Returns how many
    messages were queued, and what the next send() did.
    """
    with open_socket(ctx, zmq.PUSH, timeout_ms=100) as push, open_socket(ctx, zmq.PULL) as pull:
        push.sndhwm = pull.rcvhwm = hwm
        bind(push, "inproc://full-push")
        pull.connect("inproc://full-push")
        queued = 0
        while queued < 10 * hwm:
            try:
                push.send(b"%d" % queued)
            except zmq.Again:
                return queued, "blocked, then gave up after 100 ms (zmq.Again)"
            queued += 1
        return queued, "never blocked"
