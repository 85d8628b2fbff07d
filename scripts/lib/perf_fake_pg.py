#!/usr/bin/env python3
"""A PostgreSQL backend that answers any startup and then holds the session, for
scripts/perf-bench's memory case and scripts/scale-test: SSLRequest/GSSENCRequest get 'N';
a StartupMessage gets AuthenticationOk, a few ParameterStatus, BackendKeyData (a distinct
key per session) and ReadyForQuery. After that, by default every byte received is echoed
back (perf-bench); with --query it speaks the simple query protocol instead: a Query ('Q')
gets RowDescription (one int4 column), DataRow ("1"), CommandComplete ("SELECT 1") and
ReadyForQuery, a Terminate ('X') closes, any other message gets an ErrorResponse (0A000)
and ReadyForQuery. A CancelRequest is closed. Beside it a REST endpoint answers every HTTP
request with 200 (pgfront's health check).

usage: perf_fake_pg.py [--query] PG_HOST:PORT REST_HOST:PORT
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

# The answer to any simple Query: one row of one int4 column, as `SELECT 1` gets.
QUERY_ANSWER = (msg(b"T", struct.pack("!H", 1) + b"?column?\0" + struct.pack("!IhIhih", 0, 0, 23, 4, -1, 0)) +
                msg(b"D", struct.pack("!HI", 1, 1) + b"1") +
                msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I"))
UNSUPPORTED = (msg(b"E", b"SFATAL\0VERROR\0C0A000\0Mfake backend: only simple Query is supported\0\0") +
               msg(b"Z", b"I"))

QUERY_MODE = False


async def pg_session(reader, writer):
    try:
        while True:  # bounded by the peer: each turn consumes one opening packet
            head = await reader.readexactly(8)
            length, code = struct.unpack("!II", head)
            if length < 8 or length > 10000:
                return
            await reader.readexactly(length - 8)  # the startup's parameters: anyone is welcome
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                writer.write(b"N")
                continue
            if code == 80877102:  # CancelRequest
                return
            key = next(KEYS)
            writer.write(msg(b"R", struct.pack("!I", 0)) + PARAMS +
                         msg(b"K", struct.pack("!II", 100000 + key % 1000000, key)) +
                         msg(b"Z", b"I"))
            await writer.drain()
            break
        if QUERY_MODE:
            while True:  # one message per turn, until Terminate or the peer closes
                head = await reader.readexactly(5)
                length = struct.unpack("!I", head[1:])[0]
                if length < 4 or length > 1 << 20:
                    return
                await reader.readexactly(length - 4)
                if head[:1] == b"X":
                    return
                writer.write(QUERY_ANSWER if head[:1] == b"Q" else UNSUPPORTED)
                await writer.drain()
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
    print(f"fake PostgreSQL on {pg} ({'query' if QUERY_MODE else 'echo'} mode), REST on {rest_addr}", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--query"]:
        QUERY_MODE = True
        args = args[1:]
    if len(args) != 2:
        sys.exit(__doc__)
    asyncio.run(main(args[0], args[1]))
