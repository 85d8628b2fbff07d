#!/usr/bin/env python3
"""A PostgreSQL backend that answers any startup and then holds the session, for
scripts/perf-bench's memory case: SSLRequest/GSSENCRequest get 'N'; a StartupMessage gets
AuthenticationOk, a few ParameterStatus, BackendKeyData (a distinct key per session) and
ReadyForQuery; after that every byte received is echoed back. A CancelRequest is closed.
Beside it a REST endpoint answers every HTTP request with 200 (pgfront's health check).

usage: perf_fake_pg.py PG_HOST:PORT REST_HOST:PORT
Runs until SIGTERM/SIGINT.
"""
import asyncio, itertools, signal, struct, sys

KEYS = itertools.count(1)


def msg(kind, body):
    return kind + struct.pack("!I", len(body) + 4) + body


def param(name, value):
    return msg(b"S", name.encode() + b"\0" + value.encode() + b"\0")


PARAMS = b"".join(param(k, v) for k, v in [
    ("server_version", "15.0"), ("server_encoding", "UTF8"), ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"), ("integer_datetimes", "on"), ("standard_conforming_strings", "on")])


async def pg_session(reader, writer):
    try:
        while True:  # bounded by the peer: each turn consumes one opening packet
            head = await reader.readexactly(8)
            length, code = struct.unpack("!II", head)
            if length < 8 or length > 10000:
                return
            rest = await reader.readexactly(length - 8)
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                writer.write(b"N")
                continue
            if code == 80877102:  # CancelRequest
                return
            del rest
            key = next(KEYS)
            writer.write(msg(b"R", struct.pack("!I", 0)) + PARAMS +
                         msg(b"K", struct.pack("!II", 100000 + key % 1000000, key)) +
                         msg(b"Z", b"I"))
            await writer.drain()
            break
        while True:
            data = await reader.read(65536)
            if not data:
                return
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, OSError):
        pass
    finally:
        writer.close()


async def rest(reader, writer):
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        body = b'{"state": "running", "role": "master"}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            asyncio.TimeoutError, OSError):
        pass
    finally:
        writer.close()


async def main(pg, rest_addr):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    h, p = pg.rsplit(":", 1)
    rh, rp = rest_addr.rsplit(":", 1)
    servers = [await asyncio.start_server(pg_session, h, int(p), backlog=4096, reuse_address=True),
               await asyncio.start_server(rest, rh, int(rp), backlog=128, reuse_address=True)]
    print(f"fake PostgreSQL on {pg}, REST on {rest_addr}", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
