"""The shared kit: what every lesson, notebook and test uses.

- :mod:`.server`     run a lesson's server in a background thread, stop it cleanly
- :mod:`.transcript` record what each side did; render it as two lanes
- :mod:`.cli`        the demo / serve / client command line
- :mod:`.stream`     recv_exactly, recv_until_eof, length-prefixed messages
- :mod:`.adversary`  dribblers, floods, resets, silent peers
- :mod:`.check`      exercise checks that print ✓/✗ and never hang
- :mod:`.show`       syntax-highlighted source for notebooks
- :mod:`.sequence`   sequence diagrams of a transcript (SVG), for notebooks
- :mod:`.echo`       lesson 02's echo client and handler, the tested copy later lessons use
- :mod:`.nonblocking` lesson 04's non-blocking Connection, the tested copy lesson 05 uses
- :mod:`.chat`       the chat room's protocol (lesson 03), tested: limits, texts, clean, names
- :mod:`.lineclient` a client for line protocols (ChatClient), and a person's terminal session
- :mod:`.probes`     careless clients against a server, and the sockets it leaves behind
- :mod:`.loadgen`    a load generator that checks every reply (lesson 07, benchmarks)
- :mod:`.processes`  servers in child processes: port, CPU time, memory
- :mod:`.generators` the lab's load generators: loadgen.c when a compiler is present, pinned to a core
- :mod:`.lab`        the scaling lab's engine: points, sweeps, the load generator's ceiling (lesson 07)
- :mod:`.labreport`  the lab's tables (never a cut number), result files and figures
- :mod:`.baselines`  asyncio echo servers to measure against
- :mod:`.echoservers` every echo server of the workbook, by name: for the lab and the tests
- :mod:`.fastecho`   how fast one Python thread can echo: lesson 05's loop, tuned (serve --fast)
- :mod:`.aio`        asyncio servers on a running loop, in a thread, in the foreground (lesson 08)
- :mod:`.fanout`     a chat room's fan-out and memory per idle member, measured from outside
- :mod:`.compare`    server designs side by side: lines of code, threads, memory, a slow reader
- :mod:`.states`     the kernel's table of TCP sockets and their states: a table, a timeline (09)
- :mod:`.child`      a child process to pause, signal and kill, always reaped (09, 12)
- :mod:`.endings`    each way a connection ends, acted out, with its TCP states (09)
- :mod:`.shutdown`   waking a server blocked in accept(), recv() or select() (09)
- :mod:`.jsonrpc`    JSON-RPC 2.0 over TCP, a line per message: server and client (10)
- :mod:`.mq`         ZeroMQ's patterns (REQ/REP, PUB/SUB, PUSH/PULL) and what they drop (10)
- :mod:`.relay`      a TCP relay that loses replies on purpose (10)
- :mod:`.families`   IPv4, IPv6, dual stack, Unix paths: knocks, peers, --host/--unix (12)
- :mod:`.unixpeers`  Unix-socket peers: a crashed server, another user, a socketpair child (12)
- :mod:`.threaded`   a thread per client, at most so many at once: the skeleton of 09, 10, 12's servers
- :mod:`.tls`        a throwaway certificate authority (trustme), TLS errors in stable words (11)
- :mod:`.tlsstream`  TLS that a reader thread and writer threads may share (LineClient's ssl_context)
- :mod:`.wiretap`    a relay that keeps a copy of every byte: what someone on the wire sees
"""
from . import show  # noqa: F401  (importing it fixes rich's notebook output: see show.py)
from .server import Stopper, accept_until, listen, running
from .transcript import Transcript

__all__ = ["Stopper", "Transcript", "accept_until", "listen", "running"]
