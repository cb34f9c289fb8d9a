"""Lesson 11 exercises: a client context that verifies, and a server context with a floor."""
from __future__ import annotations

import functools
import importlib
import ssl
import warnings

from lessons.exercises import Exercise
from lessons.kit import running
from lessons.kit.check import Outcome, check, describe, scenario
from lessons.kit.tls import Authority, explain

tls = importlib.import_module("lessons.11_tls")
_authorities: dict = {}


def authority(name: str = "ours") -> Authority:
    """A throwaway CA per name, made once per process ("ours", "impostor")."""
    if name not in _authorities:
        _authorities[name] = Authority()
    return _authorities[name]


# The common first attempts.
def naive_pinned_client_context(cafile: str) -> ssl.SSLContext:
    """The usual "fix" for CERTIFICATE_VERIFY_FAILED: stop verifying. It connects to anyone."""
    return ssl._create_unverified_context()


def naive_modern_server_context(certfile: str) -> ssl.SSLContext:
    """"Compatibility": let every old client in, whatever it costs everyone else."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_cert_chain(certfile)
    return context


def old_client(version: str) -> ssl.SSLContext:
    """A client that speaks only ``version`` ("TLSv1_1"): what an old device sends."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():          # naming TLS 1.0 or 1.1 is deprecated, rightly
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = getattr(ssl.TLSVersion, version)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")   # an old client's old algorithms
    context.load_verify_locations(authority().cafile)
    return context


def _echo(call: str, expected_ok: bool, run) -> Outcome:
    """run() echoes b'hello' over TLS: passes if it did (expected_ok) or if TLS refused."""
    expected = "b'hello'" if expected_ok else "an SSLError (refused)"
    try:
        got = run()
    except ssl.SSLError as exc:
        return Outcome(call, f"raised {explain(exc)}", expected, not expected_ok)
    except Exception as exc:
        return Outcome(call, describe(exc), expected, False)
    return Outcome(call, describe(got), expected, expected_ok and got == b"hello")


def _server(certfile, context):
    return running(functools.partial(tls.serve, context=context, handshake_timeout=2.0))


# --- pinned_client_context(cafile) ---

def _client_meets(call: str, certfile: str, name: str, expected_ok: bool):
    @scenario(call, "b'hello'" if expected_ok else "an SSLError (refused)")
    def run(fn, guard):
        def attempt():
            context = fn(str(authority().cafile))
            with _server(certfile, tls.server_context(certfile)) as srv:
                return tls.tls_echo(srv.address, b"hello", context, server_hostname=name, timeout=2.0)
        return _echo(call, expected_ok, attempt)
    return run


def _property(call: str, expected: str, measure, judge):
    @scenario(call, expected)
    def run(fn, guard):
        try:
            got = measure(fn)
        except Exception as exc:
            return Outcome(call, describe(exc), expected, False)
        return Outcome(call, got, expected, judge(got))
    return run


def _client_scenarios():
    ours, impostor = authority(), authority("impostor")
    return {
        "our server, as localhost": _client_meets("echo via our server (name: localhost)",
                                                  str(ours.certfile), "localhost", True),
        "an impostor's certificate": _client_meets("echo via a server whose CA we never met",
                                                   str(impostor.certfile), "localhost", False),
        "the wrong name": _client_meets("echo via our server, as example.com",
                                        str(ours.certfile), "example.com", False),
        "an expired certificate": _client_meets("echo via our server with last month's certificate",
                                                str(ours.expired_certfile), "localhost", False),
        "only the CA in cafile": _property(
            "len(context.get_ca_certs())", "1 (our CA, not the system's store)",
            lambda fn: str(len(fn(str(ours.cafile)).get_ca_certs())), lambda got: got == "1"),
        "TLS 1.2 or newer": _property(
            "context.minimum_version", "TLSv1_2 or TLSv1_3",
            lambda fn: fn(str(ours.cafile)).minimum_version.name, lambda got: got in ("TLSv1_2", "TLSv1_3")),
    }


def check_pinned_client_context(fn):
    return check("pinned_client_context", fn, _client_scenarios(), deadline=5.0)


# --- modern_server_context(certfile) ---

def _visitor(call: str, client, expected_ok: bool):
    @scenario(call, "b'hello'" if expected_ok else "an SSLError (refused)")
    def run(fn, guard):
        def attempt():
            certfile = str(authority().certfile)
            with _server(certfile, fn(certfile)) as srv:
                return tls.tls_echo(srv.address, b"hello", client(), server_hostname="localhost", timeout=2.0)
        return _echo(call, expected_ok, attempt)
    return run


def _server_scenarios():
    today = lambda: tls.client_context(authority().cafile)   # noqa: E731
    return {
        "a client of today": _visitor("echo from a default client (TLS 1.3)", today, True),
        "a TLS 1.2 client": _visitor("echo from a client that stops at TLS 1.2",
                                     functools.partial(old_client, "TLSv1_2"), True),
        "a TLS 1.1 client": _visitor("echo from a TLS 1.1 client", functools.partial(old_client, "TLSv1_1"),
                                     False),
        "a TLS 1.0 client": _visitor("echo from a TLS 1.0 client", functools.partial(old_client, "TLSv1"),
                                     False),
        "the floor, stated": _property(
            "context.minimum_version", "TLSv1_2 or TLSv1_3",
            lambda fn: fn(str(authority().certfile)).minimum_version.name,
            lambda got: got in ("TLSv1_2", "TLSv1_3")),
    }


def check_modern_server_context(fn):
    return check("modern_server_context", fn, _server_scenarios(), deadline=5.0)


EXERCISES = [
    Exercise("11_tls", "pinned_client_context", check=check_pinned_client_context,
             naive=naive_pinned_client_context,
             todo="build it with ssl.create_default_context(cafile=...), and set the TLS 1.2 floor."),
    Exercise("11_tls", "modern_server_context", check=check_modern_server_context,
             naive=naive_modern_server_context,
             todo="a default context for Purpose.CLIENT_AUTH, minimum_version TLS 1.2, then load_cert_chain()."),
]
