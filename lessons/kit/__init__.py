"""The shared kit: what every lesson, notebook and test uses.

- :mod:`.server`     run a lesson's server in a background thread, stop it cleanly
- :mod:`.transcript` record what each side did; render it as two lanes
- :mod:`.cli`        the demo / serve / client command line
- :mod:`.stream`     recv_exactly, recv_until_eof, length-prefixed messages
- :mod:`.adversary`  dribblers, floods, resets, silent peers
- :mod:`.check`      exercise checks that print ✓/✗ and never hang
- :mod:`.show`       syntax-highlighted source for notebooks
- :mod:`.chat`       the chat room's protocol (lesson 03), tested: limits, texts, clean, names
- :mod:`.lineclient` a client for line protocols (ChatClient), and a person's terminal session
- :mod:`.probes`     careless clients against a server, and the sockets it leaves behind
- :mod:`.loadgen`    a load generator that checks every reply (lesson 07, benchmarks)
- :mod:`.processes`  servers in child processes: port, CPU time, memory
- :mod:`.generators` the lab's load generators: loadgen.c when a compiler is present, pinned to a core
- :mod:`.lab`        the scaling lab's engine: points, sweeps, the load generator's ceiling (lesson 07)
- :mod:`.labreport`  the lab's tables (never a cut number), result files and figures
- :mod:`.baselines`  asyncio echo servers to measure against
- :mod:`.aio`        asyncio servers on a running loop, in a thread, in the foreground (lesson 08)
- :mod:`.fanout`     a chat room's fan-out and memory per idle member, measured from outside
- :mod:`.compare`    server designs side by side: lines of code, threads, memory, a slow reader
- :mod:`.tls`        a throwaway certificate authority (trustme), TLS errors in stable words, TLS in memory
- :mod:`.tlsstream`  TLS that a reader thread and writer threads may share (LineClient's ssl_context)
- :mod:`.wiretap`    a relay that keeps a copy of every byte: what someone on the wire sees
"""
from . import show  # noqa: F401  (importing it fixes rich's notebook output: see show.py)
from .server import Stopper, accept_until, listen, running
from .transcript import Transcript

__all__ = ["Stopper", "Transcript", "accept_until", "listen", "running"]
