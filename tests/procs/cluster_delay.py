"""A TCP relay that delays every byte by a settable time: the latency half of ``tc netem`` on
kernels built without it (the cluster tests' ``Net.netem``). It runs in the database
namespace; nftables redirects one host's connections to the services through it.

    python -m tests.procs.cluster_delay LISTEN_PORT:HOST:PORT [...]

It prints "ready" once listening; each line ``delay SECONDS`` on stdin sets the one-way delay
(both directions), applied to data read from then on. Order is kept: a chunk is written
``delay`` after it was read, after the chunks before it.
"""

from __future__ import annotations

import asyncio
import sys
import time

from tests.procs.lifetime import die_with_parent

DELAY = [0.0]


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            at, data = await queue.get()
            if not data:
                break
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # the injected latency itself
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + DELAY[0], data))
    except OSError:
        pass
    queue.put_nowait((time.monotonic() + DELAY[0], b""))
    try:
        await sender
    except OSError:
        pass


def _relay(host: str, port: int) -> object:
    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection(host, port)
        except OSError:
            cw.close()
            return
        await asyncio.gather(_pump(cr, sw), _pump(sr, cw), return_exceptions=True)

    return handle


async def _control() -> None:
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        parts = line.split()
        if len(parts) == 2 and parts[0] == "delay":
            DELAY[0] = float(parts[1])
            print(f"delay {DELAY[0]}", flush=True)


async def main() -> None:
    servers = []
    for spec in sys.argv[1:]:
        listen, host, port = spec.split(":")
        servers.append(
            await asyncio.start_server(_relay(host, int(port)), "0.0.0.0", int(listen))  # type: ignore[arg-type]
        )
    print("ready", flush=True)
    await _control()
    for s in servers:
        s.close()


if __name__ == "__main__":
    die_with_parent()
    asyncio.run(main())
