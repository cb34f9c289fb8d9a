"""Other processes for lesson 12's Unix-socket experiments: a server that crashes,
a client that runs as another user, and an echo child on an inherited socket.

Each child is a few lines of Python run with ``python -I -c``: isolated from
the environment and from this workbook, so that it behaves the same for every
user, including one who cannot read the workbook's files. Unix only: they use
``AF_UNIX``, ``SIGKILL``, ``pass_fds`` and user switching.
"""
from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
from typing import Optional

CHILD_TIMEOUT = 10.0   # no child may outlive this, whatever goes wrong

# A server that binds a path, says "ready", and waits to be killed.
_SERVER = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen()
print("ready", flush=True)
time.sleep(60)
"""

# A client that becomes another user if asked (argv[2:]: uid gid), connects to a path, and
# prints what happened in the words of kit.check.describe_error. It drops privileges itself,
# after starting as us: the interpreter may live where that other user cannot read.
_CONNECT = """
import errno, os, socket, sys
path, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if uid >= 0:
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except OSError:
        sys.exit(3)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(path)
except OSError as exc:
    print(type(exc).__name__, "(%s)" % errno.errorcode.get(exc.errno, exc.errno))
else:
    print("connected")
"""

# Echo in capitals, on the socket whose descriptor number is argv[1], until EOF.
_UPPER = """
import socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
s.settimeout(5)
while True:
    data = s.recv(65536)
    if not data:
        break
    s.sendall(data.upper())
s.close()
"""


def _python(code: str, *args: str) -> list[str]:
    # -I: ignore PYTHON* variables, the user's site-packages and the current directory.
    return [sys.executable, "-I", "-c", code, *args]


def crash_a_server(path: str) -> int:
    """Start a server on ``path`` in a child process and kill it with SIGKILL.

    A killed process gets no chance to clean up, so the socket file stays
    behind: this is the "stale socket file" a restarted server trips over.
    Returns the child's exit status (minus the signal number: -9).
    """
    proc = subprocess.Popen(_python(_SERVER, path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd="/")
    with proc:
        try:
            ready, _, _ = select.select([proc.stdout], [], [], CHILD_TIMEOUT)
            line = proc.stdout.readline() if ready else ""
            if line.strip() != "ready":
                why = line if ready else "no word from it"
                raise RuntimeError(f"the child server did not start: {why}")
        finally:
            proc.kill()                       # SIGKILL: no handler, no finally, no cleanup
            proc.wait(CHILD_TIMEOUT)
    return proc.returncode


def other_user() -> Optional[tuple[int, int]]:
    """(uid, gid) of a user who is not us ("nobody"), or None if we cannot become anyone else.

    Only root may switch to another user; root itself passes every permission
    check, so a permission demo run as root has to ask as somebody else.
    """
    import pwd   # here, not at the top: Windows has no pwd, and the lesson must still import
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def connect_as(path: str, user: Optional[tuple[int, int]] = None) -> str:
    """Connect to the Unix socket at ``path`` from a child process, as ``user`` (uid, gid) if given.

    Returns ``"connected"`` or the error, e.g. ``"PermissionError (EACCES)"``.
    Raises PermissionError if this process may not switch to that user.
    """
    uid, gid = user if user is not None else (-1, -1)
    result = subprocess.run(_python(_CONNECT, path, str(uid), str(gid)), capture_output=True, text=True,
                            timeout=CHILD_TIMEOUT, cwd="/")
    if result.returncode == 3:
        raise PermissionError(f"cannot become uid {uid} here")
    if result.returncode != 0:
        raise RuntimeError(f"the child client failed: {result.stderr.strip()}")
    return result.stdout.strip()


def permission_experiment(directory: str, name: str = "perm.sock") -> Optional[dict[str, str]]:
    """Connect to a socket in ``directory`` under three settings of its permission bits.

    The bits that count are the asker's: as root (who passes every check) the
    asker is "nobody", and the "other" bits are cleared; as anyone else, the
    asker is you, and your owner bits are cleared. Returns None where neither
    works (root that cannot switch user). Restores the directory's mode.
    """
    user = other_user()
    shift = 0 if user is not None else 6          # the "other" bits, or the owner's
    no_write, no_search = 0o2 << shift, 0o1 << shift
    path = os.path.join(directory, name)
    before = os.stat(directory).st_mode & 0o7777
    rows = {"socket writable, directory searchable": (0o666, 0o755),
            "socket file not writable": (0o666 & ~no_write, 0o755),
            "directory not searchable": (0o666, 0o755 & ~no_search)}
    outcome = {}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        try:
            for label, (sock_mode, dir_mode) in rows.items():
                os.chmod(path, sock_mode)
                os.chmod(directory, dir_mode)
                try:
                    outcome[label] = connect_as(path, user)
                except PermissionError:
                    return None
                finally:
                    os.chmod(directory, before)
        finally:
            os.unlink(path)
    return outcome


def upper_echo_child(sock: socket.socket) -> subprocess.Popen:
    """Start a child process that echoes in capitals on ``sock`` (one end of a socketpair).

    The child inherits the descriptor (``pass_fds``). Close your own copy of
    ``sock`` after this call: while it is open, the pair stays open after the
    child closes its copy, and your end never sees EOF.
    """
    fd = sock.fileno()
    return subprocess.Popen(_python(_UPPER, str(fd)), pass_fds=[fd], cwd="/",
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextlib.contextmanager
def reaped(proc: subprocess.Popen):
    """Wait for ``proc`` on the way out (kill it if it overstays); never leave a zombie."""
    try:
        yield proc
    finally:
        try:
            proc.wait(CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
