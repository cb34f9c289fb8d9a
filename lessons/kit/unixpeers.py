"""Other processes for lesson 12's Unix-socket experiments: a server that crashes,
a client that runs as another user, and an echo child on an inherited socket.

Each child is a small self-contained function run by :class:`.child.Child`
with ``isolated=True`` (``python -I``, from ``/``): deaf to the environment
and to this workbook, so that it behaves the same for every user, including
one who cannot read the workbook's files. Unix only: they use ``AF_UNIX``,
``SIGKILL``, inherited descriptors and user switching.
"""
from __future__ import annotations

import os
import socket
from typing import Optional

from .child import Child

CHILD_TIMEOUT = 10.0   # no child may outlive this, whatever goes wrong


def bind_and_wait(path):
    """A server that binds a path, says "ready", and waits to be killed."""
    import socket   # imports inside: Child.run sends this function's source to a fresh Python
    import time
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    print("ready", flush=True)
    time.sleep(60)


def connect_as_user(path, uid, gid):
    """Become user uid (if uid >= 0), connect to path, print what happened (exit 3: cannot switch)."""
    import errno    # imports inside: Child.run sends this function's source to a fresh Python
    import os
    import socket
    import sys
    if uid >= 0:   # after starting as us: the interpreter may live where that user cannot read
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        except OSError:
            sys.exit(3)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        try:
            client.connect(path)
        except OSError as exc:   # in the words of kit.check.describe_error
            print(type(exc).__name__, "(%s)" % errno.errorcode.get(exc.errno, exc.errno))
        else:
            print("connected")


def upper_echo(fd):
    """Echo in capitals on the inherited socket whose descriptor is fd, until EOF."""
    import socket   # inside: Child.run sends this function's source to a fresh Python
    with socket.socket(fileno=fd) as sock:
        sock.settimeout(5)
        while data := sock.recv(65536):
            sock.sendall(data.upper())


def crash_a_server(path: str) -> int:
    """Start a server on ``path`` in a child process and kill it with SIGKILL.

    A killed process gets no chance to clean up, so the socket file stays
    behind: this is the "stale socket file" a restarted server trips over.
    Returns the child's exit status (minus the signal number: -9).
    """
    with Child.run(bind_and_wait, path, timeout=CHILD_TIMEOUT, isolated=True) as child:
        child.expect("ready")
        return child.kill()            # SIGKILL: no handler, no finally, no cleanup


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
    with Child.run(connect_as_user, path, uid, gid, timeout=CHILD_TIMEOUT, isolated=True) as child:
        lines, code = child.rest(), child.wait()
        if code == 3:
            raise PermissionError(f"cannot become uid {uid} here")
        if code != 0 or not lines:
            raise RuntimeError(f"the child client failed: {child.stderr().strip()}")
    return lines[-1]


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


def upper_echo_child(sock: socket.socket) -> Child:
    """Start a child process that echoes in capitals on ``sock`` (one end of a socketpair).

    The child inherits the descriptor. Close your own copy of ``sock`` after
    this call: while it is open, the pair stays open after the child closes its
    copy, and your end never sees EOF. Use the child in a ``with`` block.
    """
    fd = sock.fileno()
    return Child.run(upper_echo, fd, timeout=CHILD_TIMEOUT, isolated=True, pass_fds=(fd,))
