"""Lesson 11: the echo contract over TLS, verification failures that never fall back to
plaintext, TLS on a non-blocking socket, the chat room behind the TLS relay, the command
line, and interoperation with the openssl command.

The chat conformance suite runs over TLS too: the "11_tls" room in test_chat_rooms.py.
"""
from __future__ import annotations

import contextlib
import functools
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest

from lessons.kit import adversary, running
from lessons.kit.lineclient import ChatClient, LineClient
from lessons.kit.processes import ServerProcess
from lessons.kit.tls import Authority, explain, records
from lessons.kit.tlsstream import TLSStream
from lessons.kit.transcript import CLIENT, CLOSE, EOF, ERROR, RECV, SERVER
from lessons.kit.wiretap import Wiretap
from tests.conftest import lesson, run_module, said_once_per_shortage

tls = lesson("11_tls")
SECRET = b"the secret that must never cross the wire in the clear"


@pytest.fixture(scope="module")
def ca():
    with Authority() as authority:
        yield authority


@pytest.fixture(scope="module")
def impostor():
    with Authority() as authority:
        yield authority


@pytest.fixture
def trusting(ca):
    return tls.client_context(ca.cafile)


def echo_server(certfile, **options):
    return running(functools.partial(tls.serve, context=tls.server_context(certfile), **options))


@pytest.fixture
def server(ca):
    with echo_server(ca.certfile) as srv:
        yield srv


# --- The echo contract, over TLS ---

def test_hello_and_close_notify_both_ways(server, trusting):
    assert tls.tls_echo(server.address, b"hello", trusting, log=server.log) == b"hello"
    assert server.log.wait_for_event(SERVER, CLOSE)
    eofs = [(e.side, e.detail) for e in server.log.ordered() if e.kind == EOF]
    assert eofs == [(SERVER, ""), (CLIENT, "close_notify")]   # the server saw ours, we saw its
    assert not [e for e in server.log.events() if e.kind == ERROR]


def test_ten_mebibytes_come_back_intact_and_the_loop_met_would_block(server, trusting):
    payload = adversary.flood_pattern(10 * 1024 * 1024)
    counts: dict = {}
    assert tls.tls_echo(server.address, payload, trusting, counts=counts) == payload
    assert counts["SSLWantReadError"] >= 1 and counts["select"] >= 2


def test_clients_are_served_at_once_and_a_silent_one_holds_nobody(server, trusting):
    with adversary.silent(server.address):    # connected, never says ClientHello
        for n in range(20):
            assert tls.tls_echo(server.address, b"client %d" % n, trusting, timeout=3) == b"client %d" % n


def test_a_reset_mid_echo_is_that_clients_problem_only(server, trusting):
    with socket.create_connection(server.address, timeout=5) as raw:
        conn = trusting.wrap_socket(raw, server_hostname="localhost")
        conn.sendall(b"y" * 1_000_000)
        adversary.abort(conn)
        conn.close()
    assert tls.tls_echo(server.address, b"next", trusting) == b"next"
    assert server.log.wait_for(lambda evs: any(e.kind == ERROR and e.who == "client 1" for e in evs))
    assert server.errors == []


def test_a_tcp_close_without_close_notify_is_truncation_not_an_end(server, trusting):
    with socket.create_connection(server.address, timeout=5) as raw:
        conn = trusting.wrap_socket(raw, server_hostname="localhost")
        conn.sendall(b"partial")
        assert conn.recv(100) == b"partial"
        socket.socket.shutdown(conn, socket.SHUT_WR)   # a bare FIN, as a forger could send
        with pytest.raises(OSError):                     # the server hangs up, no close_notify
            while conn.recv(100):
                pass
        conn.close()
    assert server.log.wait_for(lambda evs: any(e.kind == ERROR and "SSLEOFError" in e.detail for e in evs))


def test_the_client_refuses_an_echo_cut_short(ca, trusting):
    def cut_short(listener, stop, log):     # echoes, then drops the connection without close_notify
        context = tls.server_context(ca.certfile)
        for conn, _ in tls.accept_until(listener, stop):
            with context.wrap_socket(conn, server_side=True) as conn:
                conn.sendall(conn.recv(100))
                socket.socket.shutdown(conn, socket.SHUT_WR)   # a bare FIN, no close_notify
                with contextlib.suppress(OSError):
                    while socket.socket.recv(conn, 100):        # until the client gives up
                        pass
    with running(cut_short) as srv, pytest.raises(ssl.SSLEOFError):
        tls.tls_echo(srv.address, b"hello", trusting)


def test_tls_stream_half_closes_with_close_notify_and_reads_on(server, trusting):
    payload = adversary.flood_pattern(300_000)
    with socket.create_connection(server.address, timeout=5) as raw, \
            TLSStream(raw, trusting, "localhost") as stream:
        stream.sendall(payload)
        stream.shutdown(socket.SHUT_WR)     # close_notify while the echo is still arriving
        got = b"".join(iter(lambda: stream.recv(65536), b""))
    assert got == payload


@pytest.mark.parametrize("ending", ["close_notify", "bare FIN"])
def test_a_line_client_closes_at_once_after_the_server_has_gone(ca, trusting, ending):
    # TLSStream.shutdown() once spun for ever when the server had already closed:
    # at the end of the input, read() returns b'' without raising, and it read again.
    context = tls.server_context(ca.certfile)

    def say_bye_and_go(listener, stop, log):
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as ours:
            ours.sendall(b"bye\n")
            if ending == "close_notify":
                with contextlib.suppress(ssl.SSLError, OSError):
                    ours.unwrap()

    with running(say_bye_and_go) as srv:
        client = LineClient(srv.address, ssl_context=trusting, server_hostname="localhost")
        assert client.next_line(timeout=5) == "bye"
        assert client.wait_closed(5)
        closing = threading.Thread(target=client.close, daemon=True)
        closing.start()
        closing.join(5)
        assert not closing.is_alive(), "close() hangs after the server has gone"


# --- Verification fails loudly, and nothing is ever sent in the clear ---

def tapped_attempt(address, **kwargs):
    """tls_echo through a wiretap: (what happened, what crossed the wire from the client)."""
    tap = Wiretap(address)
    with running(tap.serve) as wire:
        try:
            outcome = tls.tls_echo(wire.address, SECRET, **kwargs)
        except OSError as exc:
            outcome = exc
    return outcome, tap.bytes_from_client()


@pytest.mark.parametrize("case, code, message", [
    ("unknown CA", 20, "unable to get local issuer certificate"),
    ("wrong name", 62, "Hostname mismatch, certificate is not valid for 'example.com'."),
    ("expired", 10, "certificate has expired"),
])
def test_verification_failures_are_clear_and_send_nothing(ca, impostor, trusting, case, code, message):
    certfile = {"unknown CA": impostor.certfile, "expired": ca.expired_certfile}.get(case, ca.certfile)
    name = "example.com" if case == "wrong name" else "localhost"
    with echo_server(certfile) as srv:
        outcome, wire = tapped_attempt(srv.address, context=trusting, server_hostname=name)
        assert srv.log.wait_for(lambda evs: any(e.kind == CLOSE for e in evs))
    assert isinstance(outcome, ssl.SSLCertVerificationError), outcome
    assert (outcome.verify_code, outcome.verify_message) == (code, message)
    assert explain(outcome) == f"SSLCertVerificationError: {message} (verify code {code})"
    assert SECRET not in wire and not any(kind == "application_data" for kind, _ in records(wire))
    assert not [e for e in srv.log.events(SERVER) if e.kind == RECV]


def test_verification_off_is_the_problem(impostor):
    with echo_server(impostor.certfile) as srv:   # anyone's certificate, for any name
        outcome, _ = tapped_attempt(srv.address, context=tls.naive_client_context(),
                                    server_hostname="your-bank.example")
    assert outcome == SECRET   # "it works": the impostor decrypted and read every byte


def test_a_plain_client_gets_no_echo_from_the_tls_server(server):
    try:
        reply = adversary.half_close(server.address, SECRET)
    except OSError:   # a reset; or ENOTCONN from shutdown(), when the reset came before it
        reply = b""
    assert SECRET not in reply
    assert server.log.wait_for(lambda evs: any(e.kind == ERROR for e in evs))


def test_a_tls_client_refuses_a_plain_server(trusting):
    with running(tls.plain_echo) as plain, pytest.raises(ssl.SSLError) as caught:
        tls.tls_echo(plain.address, SECRET, trusting)
    assert not isinstance(caught.value, ssl.SSLCertVerificationError)


def test_the_contexts_verify_and_have_a_floor(ca):
    client, server = tls.client_context(ca.cafile), tls.server_context(ca.certfile)
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert client.minimum_version >= ssl.TLSVersion.TLSv1_2 <= server.minimum_version
    assert tls.naive_client_context().verify_mode == ssl.CERT_NONE


def test_a_slow_handshake_is_dropped(ca, trusting):
    with echo_server(ca.certfile, handshake_timeout=0.3) as srv, adversary.silent(srv.address):
        assert srv.log.wait_for(lambda evs: any(e.kind == ERROR and "TimeoutError" in e.detail for e in evs), 3)
        assert tls.tls_echo(srv.address, b"still here", trusting) == b"still here"


def test_stopping_does_not_wait_for_a_handshake_that_never_comes(ca):
    # The handshake read from a socket the stopper could not wake (wrap_socket detaches the one
    # it tracks): `serve` took the whole 10 s handshake timeout to stop, failing with a traceback.
    with echo_server(ca.certfile) as srv:
        with adversary.silent(srv.address):
            assert srv.log.wait_for_event(SERVER, "accept")
            time.sleep(0.3)  # its thread is now waiting in the handshake (not a timed assertion)
            srv.shutdown()   # while it is still there; raises if the thread took over JOIN_TIMEOUT
            assert srv.errors == [] and not srv.thread.is_alive()


def test_past_its_limit_a_connection_is_closed_at_once_and_the_others_go_on(ca, trusting):
    # A thread each, without a bound, ends for everyone when threads or memory run out: under
    # a 1.5 GB address-space limit, 52 silent connections ended `serve` ("can't start new thread").
    with echo_server(ca.certfile) as srv:
        with contextlib.ExitStack() as stack:
            for _ in range(tls.MAX_CLIENTS):   # connected, never say ClientHello
                stack.enter_context(adversary.silent(srv.address))
            with socket.create_connection(srv.address, timeout=5) as extra:
                assert extra.recv(1) == b""    # closed now, not after the 10 s handshake timeout
        assert srv.log.wait_for(lambda evs: sum(e.kind == CLOSE for e in evs) == tls.MAX_CLIENTS, 5)
        assert [e.detail for e in srv.log.events() if e.kind == ERROR][:1] == ["refused: too many clients"]
        assert tls.tls_echo(srv.address, b"a place again", trusting) == b"a place again"


# --- TLS on a non-blocking socket: what a selector cannot see ---

def test_pending_holds_data_that_select_does_not_show(server, trusting):
    with socket.create_connection(server.address, timeout=5) as raw, selectors.DefaultSelector() as sel:
        conn = trusting.wrap_socket(raw, server_hostname="localhost")
        with conn:
            conn.sendall(b"x" * 1000)
            assert conn.recv(10) == b"x" * 10          # waits for the record, takes 10 bytes
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ)
            assert conn.pending() == 990                # decrypted, inside TLS
            assert sel.select(0.2) == []                # ...and the socket itself has nothing
            assert conn.recv(2000) == b"x" * 990


def test_want_write_when_the_peer_does_not_read(ca, trusting):
    def never_reads(listener, stop, log):
        context = tls.server_context(ca.certfile)
        for conn, _ in tls.accept_until(listener, stop):
            with context.wrap_socket(conn, server_side=True) as conn:
                stop.wait()
    with running(never_reads) as srv, socket.create_connection(srv.address, timeout=5) as raw:
        with trusting.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.setblocking(False)
            with pytest.raises(ssl.SSLWantWriteError):
                for _ in range(10_000):
                    conn.send(b"z" * 16384)


# --- The chat room over TLS (lesson 03's, behind the relay) ---

def test_chat_over_tls_through_lesson_03s_room_in_a_child_process(ca):
    serve_chat = functools.partial(tls.serve_chat, context=tls.server_context(ca.certfile))
    trusting = tls.client_context(ca.cafile)
    with running(serve_chat) as room:
        with ChatClient(room.address, "alice", ssl_context=trusting, server_hostname="localhost") as alice, \
                ChatClient(room.address, "bob", ssl_context=trusting, server_hostname="localhost") as bob:
            assert alice.expect("* bob joined")
            alice.say("secret plans")
            assert bob.next_line() == "alice: secret plans"
            bob.say("/quit")
            assert bob.expect("* bye")
            assert alice.next_line() == "* bob left"
        with pytest.raises(ssl.SSLCertVerificationError):   # the system's CAs do not know ours
            ChatClient(room.address, "eve", ssl_context=tls.client_context(), server_hostname="localhost")


# --- The command line, and openssl ---

@pytest.fixture(scope="module")
def served():
    """One `serve` for the command-line tests (a process costs about a second to start)."""
    with ServerProcess.lesson("11_tls") as srv:
        cafile = srv.proc.stdout.readline().strip().split(": ", 1)[1]
        yield srv, cafile
        code, err = srv.stop(signal.SIGTERM)
        assert code == 0 and "Traceback" not in err


def test_serve_prints_the_ca_file_and_the_client_verifies_it(served):
    srv, cafile = served
    result = run_module("lessons.11_tls", "client", "--cafile", cafile, "--port", str(srv.port), "hello tls")
    assert (result.returncode, result.stdout) == (0, "hello tls\n"), result.stderr


def test_a_client_without_the_ca_says_what_to_do(served):
    srv, _ = served
    result = run_module("lessons.11_tls", "client", "--port", str(srv.port), "hi")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "unable to get local issuer certificate" in result.stderr and "--cafile" in result.stderr


def test_a_wrong_server_name_is_refused_from_the_command_line(served):
    srv, cafile = served
    result = run_module("lessons.11_tls", "client", "--cafile", cafile, "--port", str(srv.port),
                        "--server-name", "example.com", "hi")
    assert result.returncode == 1 and "Hostname mismatch" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["client", "--cafile", "/nonexistent/ca.pem", "hi"], "cannot use --cafile /nonexistent/ca.pem"),
    (["client", "--cafile", __file__, "hi"], "not a PEM certificate (SSLError)"),
    (["client"], "give a message to echo, or --chat"),
    (["serve", "--handshake-timeout", "0"], "must be more than 0"),
])
def test_bad_client_input_gets_one_line(args, message):
    result = run_module("lessons.11_tls", *args)
    assert result.returncode in (1, 2) and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_chat_over_tls_from_the_command_line():
    with ServerProcess.lesson("11_tls", "--chat") as srv:
        cafile = srv.proc.stdout.readline().strip().split(": ", 1)[1]
        with ChatClient(srv.address, "alice", ssl_context=tls.client_context(cafile)) as alice:
            result = run_module("lessons.11_tls", "client", "--chat", "--cafile", cafile, "--port",
                                str(srv.port), "--name", "bob", input="hello alice\n/quit\n")
            assert result.returncode == 0, result.stderr
            assert "* welcome, bob!" in result.stdout and "Traceback" not in result.stderr
            # At the end of its input bob waits for the room to go quiet before its close_notify
            # (asyncio's TLS answers one by closing): so the room's last line reaches it.
            assert "* bye" in result.stdout
            assert alice.expect("bob: hello alice")
            assert alice.expect("* bob left")
        code, err = srv.stop(signal.SIGTERM)
    assert code == 0 and "Traceback" not in err


def test_the_tls_room_out_of_descriptors_says_so_once_and_recovers():
    # asyncio.start_server() printed a traceback for every accept() that failed with EMFILE,
    # over and over while it lasted (15,536 lines in 5 s, with 300 connections and 200 descriptors).
    script = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
              "sys.argv = ['11_tls', 'serve', '--chat', *sys.argv[1:]]; "
              "runpy.run_module('lessons.11_tls', run_name='__main__')")
    with ServerProcess(["-c", script]) as srv:
        cafile = srv.proc.stdout.readline().strip().split(": ", 1)[1]
        with contextlib.ExitStack() as stack:
            for _ in range(100):                     # past the 64 descriptors
                stack.enter_context(socket.create_connection(srv.address, timeout=5))
            time.sleep(1.0)                          # while it lasts: what is logged?
        with ChatClient(srv.address, ssl_context=tls.client_context(cafile), timeout=10) as late:
            assert late.greeting == "* welcome to the chat room; what is your name?"
        code, err = srv.stop(signal.SIGTERM)
    assert code == 0 and "Traceback" not in err
    assert said_once_per_shortage(err) >= 1


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
@pytest.mark.parametrize("trust, verified", [("ours", True), ("another CA", False)])
def test_openssl_s_client_verifies_the_server(served, impostor, trust, verified):
    srv, cafile = served
    cafile = cafile if trust == "ours" else str(impostor.cafile)
    result = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{srv.port}", "-CAfile", cafile,
                             "-verify_return_error", "-verify_hostname", "localhost", "-brief"],
                            input="", capture_output=True, text=True, timeout=20)
    assert (result.returncode == 0) == verified, result.stderr
    assert ("Verification: OK" in result.stderr) == verified


def readline_within(stream, timeout: float) -> str:
    """stream.readline(), or '' if no line comes within timeout."""
    box: list = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), name="readline", daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
def test_openssl_s_client_gets_its_echo(served):
    srv, cafile = served
    argv = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{srv.port}", "-CAfile", cafile,
            "-verify_return_error", "-verify_hostname", "localhost", "-quiet"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as client:
        try:
            client.stdin.write("hello from openssl\n")
            client.stdin.flush()
            line = readline_within(client.stdout, 10)
        finally:
            client.kill()     # -quiet implies -ign_eof: it would wait for the server to close
            client.communicate(timeout=10)
    assert line == "hello from openssl\n"

