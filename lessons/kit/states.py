"""The kernel's table of TCP sockets on a lesson's own ports: their states, as a table or timeline.

    states = SocketStates()
    states.name(listener, "server")          # by its address: every socket on it is the server's
    states.name(client_sock, "client 1")
    states.snap("client closed", {"client 1 → server": "FIN_WAIT2",
                                  "server → client 1": "CLOSE_WAIT",
                                  "server (listening)": "LISTEN"})
    print(states.table())                    # socket · state · owner, now
    print(states.timeline())                 # one row per snap, one column per socket

The states come from the operating system (on Linux from /proc/net/tcp and tcp6,
elsewhere through psutil): the same table as these shell commands read (run
them while a lesson's server listens on 9909):

    ss -tan 'sport = :9909 or dport = :9909'          # Linux
    netstat -an | grep 9909                           # Linux, macOS, Windows
    lsof -nP -iTCP:9909                               # Linux, macOS: only sockets a process owns

A socket in TIME_WAIT (and one in FIN_WAIT2 after close()) belongs to no process
any more: the kernel keeps it alone. So the view reads the *system-wide* table
and keeps the rows on the lesson's own ports: those whose local address, and
remote address if any, are named here.
Where the system-wide table needs privileges (macOS), it falls back to this
process's sockets and those of the child processes named here, and says what
is missing (``states.missing``).

Sockets are labelled by name, never by address, so that a notebook's output is
the same on every run: "server (listening)", "client 1 → server" (client 1's
end), "server → client 1" (the server's end of that connection).

``snap`` and ``settle`` wait (a bounded poll) until the table is exactly what you
expect, because a state changes a moment after the call that causes it: a
notebook must only ever show states that are certain.
"""
from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Optional, Union

import psutil
from rich.table import Table

POLL = 0.02          # seconds between two looks at the kernel's table
SETTLE_TIMEOUT = 3.0
GONE = "—"          # not in the kernel's table: closed, reset, or never there

# States a socket can be in after its process has let go of it (closed it, or died).
ORPHAN_STATES = {"TIME_WAIT", "FIN_WAIT1", "FIN_WAIT2", "LAST_ACK", "CLOSING"}

# Linux lists every TCP socket of this network namespace in these files, readable by all.
LINUX_TABLES = [(path, family) for path, family in (("/proc/net/tcp", socket.AF_INET),
                                                    ("/proc/net/tcp6", socket.AF_INET6))
                if sys.platform.startswith("linux") and os.path.exists("/proc/net/tcp")]
# The kernel's state numbers (include/net/tcp_states.h), named as psutil and ss name them.
PROC_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
                   "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
                   "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def _proc_address(text: str, family: int) -> tuple[str, int]:
    """"0100007F:1F90" (as /proc/net/tcp writes it: 32-bit words in host order) to an address."""
    ip, port = text.split(":")
    words = struct.unpack(f"={len(ip) // 8}I", bytes.fromhex(ip))
    return socket.inet_ntop(family, struct.pack(f">{len(words)}I", *words)), int(port, 16)


@dataclass(frozen=True)
class Row:
    """One socket in the kernel's table."""
    label: str
    state: str
    owner: str                 # "this process", a child's name, "no process", "another process"
    local: tuple
    remote: Optional[tuple]

    def record(self) -> dict:
        """The row as the exercise reads it: ports and state only."""
        remote = self.remote[1] if self.remote else None
        return {"local": self.local[1], "remote": remote, "state": self.state}


class SocketStates:
    """The lesson's own sockets, as the kernel sees them, labelled by name."""

    def __init__(self) -> None:
        self._names: dict[tuple, str] = {}      # (ip, port) -> name
        self._processes: dict[int, str] = {}    # pid -> name, for the owner column
        self.history: list[tuple[str, dict]] = []
        self.missing: Optional[str] = None       # set when the platform hides part of the table

    # --- naming ---

    def name(self, what: Union[socket.socket, tuple], label: str) -> None:
        """Name a socket (by its local address) or an address. Name a listener
        "server", and every connection accepted from it is the server's too."""
        address = what.getsockname() if isinstance(what, socket.socket) else what
        self._names[(address[0], address[1])] = label

    def name_process(self, pid: int, label: str) -> None:
        """Name a child process, for the owner column (and so the fallback reads its sockets)."""
        self._processes[pid] = label

    def forget(self) -> None:
        """Drop every name and the history: start a fresh view."""
        self._names.clear()
        self._processes.clear()
        self.history.clear()

    # --- reading the kernel's table ---

    def _connections(self) -> list[tuple]:
        """(local, remote, state, pid) for every TCP socket this view can see."""
        if self.missing is None and LINUX_TABLES:
            return self._linux_connections()
        if self.missing is None:
            try:
                table = psutil.net_connections(kind="tcp")
                return [(c.laddr, c.raddr, c.status, c.pid) for c in table]
            except psutil.AccessDenied:
                self.missing = ("this platform lists other processes' sockets only with "
                                "privileges: sockets that belong to no process (TIME_WAIT, "
                                "FIN_WAIT2 after close) are not shown")
        found = []
        for pid in [os.getpid(), *self._processes]:
            try:
                process = psutil.Process(pid)
                read = getattr(process, "net_connections", None) or process.connections  # psutil<6
                found += [(c.laddr, c.raddr, c.status, pid) for c in read(kind="tcp")]
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    def _linux_connections(self) -> list[tuple]:
        """The same rows as psutil.net_connections(), read from /proc/net/tcp and tcp6.

        psutil finds each socket's process by reading the descriptors of every process
        on the machine: 20 ms a call on a quiet machine, and settle() calls it every
        20 ms. Only this process and the children named here can own one of our
        sockets, so only their descriptors are read. A socket no process holds has
        inode 0 (TIME_WAIT, an orphaned FIN_WAIT2); one held by a process not named
        here is "another process" (pid -1)."""
        owners = {}
        for pid in [os.getpid(), *self._processes]:
            with contextlib.suppress(OSError):   # a child that has gone
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if target.startswith("socket:["):
                            owners[int(target[8:-1])] = pid
        ports = {port for _, port in self._names}
        found = []
        for path, family in LINUX_TABLES:
            with contextlib.suppress(FileNotFoundError), open(path) as table:   # no IPv6
                next(table)                                                   # the header
                for line in table:
                    fields = line.split()
                    local, remote = _proc_address(fields[1], family), _proc_address(fields[2], family)
                    if local[1] not in ports and remote[1] not in ports:
                        continue
                    inode = int(fields[9])
                    pid = None if inode == 0 else owners.get(inode, -1)
                    state = PROC_TCP_STATES.get(fields[3], fields[3])
                    found.append((local, remote if remote[1] else None, state, pid))
        return found

    def rows(self) -> list[Row]:
        """The named sockets in the kernel's table now, sorted by label."""
        rows = []
        for laddr, raddr, state, pid in self._connections():
            local = (laddr[0], laddr[1]) if laddr else None
            remote = (raddr[0], raddr[1]) if raddr else None
            # Both ends named: a TIME_WAIT left on one of these ports by an earlier
            # connection (they last a minute) is not mistaken for one of ours.
            if local not in self._names or (remote is not None and remote not in self._names):
                continue
            label = self._label(local, remote, state)
            rows.append(Row(label, state, self._owner(pid), local, remote))
        return sorted(rows, key=lambda r: (r.label, r.state))

    def _label(self, local: tuple, remote: Optional[tuple], state: str) -> str:
        if remote is None or state == "LISTEN":
            return f"{self._names[local]} (listening)"
        return f"{self._names[local]} → {self._names[remote]}"

    def _owner(self, pid: Optional[int]) -> str:
        if pid is None:
            return "no process"
        if pid == os.getpid():
            return "this process"
        return self._processes.get(pid, "another process")

    def states(self) -> dict[str, str]:
        """{label: state} for the named sockets now."""
        return {row.label: row.state for row in self.rows()}

    # --- waiting for certain states ---

    def settle(self, expected: dict[str, str], timeout: float = SETTLE_TIMEOUT) -> list[Row]:
        """Wait until the named sockets are exactly ``expected`` ({label: state}, nothing
        else); return the rows. Raises TimeoutError saying what differs."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows()
            now = {row.label: row.state for row in rows}
            if self._matches(now, expected):
                return rows
            if time.monotonic() >= deadline:
                raise TimeoutError(f"after {timeout:g} s the sockets are {now}, "
                                   f"expected {expected}")
            time.sleep(POLL)

    def _matches(self, now: dict, expected: dict) -> bool:
        if self.missing is None:
            return now == expected
        # Fallback: orphaned sockets cannot be seen, so their absence is no surprise.
        visible = {label: state for label, state in expected.items() if state not in ORPHAN_STATES}
        return {label: state for label, state in now.items() if label in expected} == visible \
            and set(now) <= set(expected)

    def snap(self, moment: str, expected: dict[str, str],
             timeout: float = SETTLE_TIMEOUT) -> list[Row]:
        """Settle on ``expected``, then record it as one moment of the timeline."""
        rows = self.settle(expected, timeout)
        self.history.append((moment, {row.label: row.state for row in rows}))
        return rows

    # --- views ---

    def table(self, title: str = "the kernel's table, now", rows: Optional[list[Row]] = None):
        """A rich Table: socket, state, owner."""
        table = Table(title=title, title_justify="left", caption=self.missing)
        table.add_column("socket", style="cyan", no_wrap=True)
        table.add_column("TCP state", style="bold", no_wrap=True)
        table.add_column("owner", style="dim", no_wrap=True)
        for row in self.rows() if rows is None else rows:
            table.add_row(row.label, row.state, row.owner)
        return table

    def timeline(self, title: str = "socket states over time"):
        """A rich Table with one row per snap and one column per socket (— : not in the table)."""
        labels: list[str] = []
        for _, states in self.history:
            labels += [label for label in states if label not in labels]
        table = Table(title=title, title_justify="left", caption=self.missing)
        table.add_column("moment", style="dim")
        for label in labels:
            table.add_column(label, style="cyan", no_wrap=True)
        for moment, states in self.history:
            table.add_row(moment, *[states.get(label, GONE) for label in labels])
        return table


def tcp_info(sock: socket.socket) -> Optional[dict]:
    """A few of the kernel's counters for one connection (Linux ``TCP_INFO``); None elsewhere.

    ``ms since data received`` grows while the peer says nothing; ``ms since ACK
    received`` drops back each time the peer's kernel acknowledges something,
    keepalive probes included. ``unanswered probes`` counts keepalive probes
    still waiting for an answer.
    """
    option = getattr(socket, "TCP_INFO", None)
    if option is None or not sys.platform.startswith("linux"):
        return None
    raw = sock.getsockopt(socket.IPPROTO_TCP, option, 104)
    # struct tcp_info: 8 one-byte fields (state, ca_state, retransmits, probes, ...),
    # 9 u32 (rto ... fackets), then last_data_sent, last_ack_sent, last_data_recv, last_ack_recv.
    last_data_recv, last_ack_recv = struct.unpack_from("II", raw, 52)
    return {"unanswered probes": raw[3], "ms since data received": last_data_recv,
            "ms since ACK received": last_ack_recv}
