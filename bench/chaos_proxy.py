#!/usr/bin/env python3
"""TCP proxy in front of the machine's MariaDB, for bench/chaos.sh.

The chaos benchmark must "stop MariaDB for 10 s", but the MariaDB on this
machine is shared (CI and other engineers use it) and is never stopped. So
the chaos cluster reaches it only through this proxy (nodes use
`mysql://...@127.0.0.1:LISTEN/db?prefer_socket=false`, so the driver does not
switch to the local Unix socket), and an "outage" is the proxy's:

  SIGUSR1  outage: close the listening socket (new connects are refused,
           ECONNREFUSED, as from a stopped server) and reset every proxied
           connection (what the clients of a killed mysqld see).
  SIGUSR2  back: listen again; new connections reach MariaDB.

What this does not simulate: a mysqld restart's own recovery time and a cold
buffer pool, or a host that vanishes without refusing (a partition; that one
is tested by tests/cluster.rs). Each state change is logged to stderr with a
UTC timestamp.

Usage: chaos_proxy.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT
"""
import asyncio
import datetime
import signal
import socket
import struct
import sys


def log(msg):
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    print(f"{now} chaos_proxy: {msg}", file=sys.stderr, flush=True)


class Proxy:
    def __init__(self, port, up_host, up_port):
        self.port, self.up_host, self.up_port = port, up_host, up_port
        self.server = None
        self.conns = set()  # writers of both sides of every proxied connection
        self.accepted = 0

    async def listen(self):
        # SO_REUSEADDR (asyncio's default) lets us listen again at once.
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port, backlog=512)
        log(f"listening on 127.0.0.1:{self.port} -> {self.up_host}:{self.up_port}")

    async def handle(self, cr, cw):
        self.accepted += 1
        try:
            ur, uw = await asyncio.open_connection(self.up_host, self.up_port)
        except OSError as e:
            log(f"upstream connect failed: {e}")
            self.reset(cw)
            return
        for w in (cw, uw):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = (cw, uw)
        self.conns.add(pair)
        try:
            await asyncio.gather(self.pipe(cr, uw), self.pipe(ur, cw))
        finally:
            self.conns.discard(pair)
            for w in pair:
                w.close()

    @staticmethod
    async def pipe(r, w):
        try:
            while True:
                b = await r.read(65536)
                if not b:
                    break
                w.write(b)
                await w.drain()
        except (OSError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                w.write_eof()
            except (OSError, RuntimeError):
                pass

    @staticmethod
    def reset(w):
        # SO_LINGER 0: close sends RST, as the kernel does for a dead mysqld.
        s = w.get_extra_info("socket")
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        w.transport.abort()

    def down(self):
        if self.server is None:
            return
        self.server.close()
        self.server = None
        n = len(self.conns)
        for cw, uw in list(self.conns):
            self.reset(cw)
            uw.transport.abort()
        self.conns.clear()
        log(f"OUTAGE: listener closed (connects refused), {n} connections reset")

    async def up(self):
        if self.server is not None:
            return
        await self.listen()
        log("BACK: accepting connections again")


async def main():
    port, host, up = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    p = Proxy(port, host, up)
    await p.listen()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, p.down)
    loop.add_signal_handler(signal.SIGUSR2, lambda: asyncio.ensure_future(p.up()))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    log(f"stopping ({p.accepted} connections accepted in all)")


if __name__ == "__main__":
    asyncio.run(main())
