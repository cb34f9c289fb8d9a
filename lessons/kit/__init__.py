"""The shared kit: what every lesson, notebook and test uses.

- :mod:`.server`     run a lesson's server in a background thread, stop it cleanly
- :mod:`.transcript` record what each side did; render it as two lanes
- :mod:`.cli`        the demo / serve / client command line
- :mod:`.stream`     recv_exactly, recv_until_eof, length-prefixed messages
- :mod:`.adversary`  dribblers, floods, resets, silent peers
- :mod:`.check`      exercise checks that print ✓/✗ and never hang
- :mod:`.show`       syntax-highlighted source for notebooks
- :mod:`.lineserver` a single-threaded selectors line server (lesson 05's exercise)
- :mod:`.loadgen`    a load generator that checks every reply (lesson 07, benchmarks)
- :mod:`.processes`  servers in child processes: port, CPU time, memory
- :mod:`.generators` the lab's load generators: loadgen.c when a compiler is present, pinned to a core
- :mod:`.lab`        the scaling lab's engine: points, sweeps, the load generator's ceiling (lesson 07)
- :mod:`.labreport`  the lab's tables (never a cut number), result files and figures
- :mod:`.baselines`  asyncio echo servers to measure against
"""
from .server import Stopper, accept_until, listen, running
from .transcript import Transcript

__all__ = ["Stopper", "Transcript", "accept_until", "listen", "running"]
