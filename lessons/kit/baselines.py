"""Standard-library asyncio echo servers, as baselines to measure the lessons against.

    python -m lessons.kit.baselines protocol --port 0    # asyncio.Protocol
    python -m lessons.kit.baselines streams  --port 0    # asyncio streams

Each prints ``listening on HOST:PORT`` first, like the lessons' servers, and
stops cleanly on Ctrl-C or SIGTERM. Each keeps lesson 02's echo contract.
"""
from __future__ import annotations

import argparse
import asyncio
import signal


class EchoProtocol(asyncio.Protocol):
    """Echo with callbacks: write back whatever arrives."""
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False   # let the transport close once what we wrote has been sent


async def _echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(kind: str, host: str, port: int) -> None:
    """Serve echo with asyncio (``kind``: protocol or streams) until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    if kind == "protocol":
        server = await loop.create_server(EchoProtocol, host, port, backlog=4096)
    else:
        server = await asyncio.start_server(_echo_stream, host, port, backlog=4096)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv=None) -> int:
    """``python -m lessons.kit.baselines KIND``."""
    parser = argparse.ArgumentParser(prog="python -m lessons.kit.baselines", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["protocol", "streams"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (if installed)")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop   # optional, installed for benchmarks only: imported only when asked for
        uvloop.install()
    asyncio.run(serve(args.kind, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
