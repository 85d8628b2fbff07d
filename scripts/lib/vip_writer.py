"""Writer for scripts/vip-test: commits a row through the VIP every INTERVAL seconds and logs
every event with a wall-clock timestamp (ms), so the test can tell when writes resumed.

usage: python vip_writer.py DSN [INTERVAL]

Lines on stdout (flushed):
  C <ms> <conn>         connection number <conn> established
  W <ms> <conn>         a row committed on connection <conn>
  E <ms> <conn> <text>  an error (connect: conn 0); the connection is dropped
While disconnected it starts a new connect attempt every 0.2 s (each may take up to
connect_timeout) and keeps the first that succeeds, so a reconnect is seen within 0.2 s
of the VIP answering again instead of one connect_timeout later.
"""

import queue
import signal
import sys
import threading
import time

import psycopg2

DSN = sys.argv[1]
INTERVAL = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1
MAX_INFLIGHT = 8
out_lock = threading.Lock()


def log(*fields):
    line = " ".join(str(f) for f in fields)
    with out_lock:
        sys.stdout.write(line.replace("\n", " ") + "\n")
        sys.stdout.flush()


def now_ms():
    return int(time.time() * 1000)


def connect_racing():
    results = queue.Queue()
    inflight = 0

    def attempt():
        try:
            results.put(psycopg2.connect(DSN))
        except Exception as e:  # noqa: BLE001 - any failure is just a failed attempt
            results.put(e)

    while True:
        if inflight < MAX_INFLIGHT:
            threading.Thread(target=attempt, daemon=True).start()
            inflight += 1
        deadline = time.monotonic() + 0.2
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                r = results.get(timeout=left)
            except queue.Empty:
                break
            inflight -= 1
            if isinstance(r, Exception):
                log("E", now_ms(), 0, type(r).__name__, str(r).strip().splitlines()[0] if str(r).strip() else "")
                continue
            late = inflight

            def close_late():
                for _ in range(late):
                    c = results.get()
                    if not isinstance(c, Exception):
                        c.close()

            threading.Thread(target=close_late, daemon=True).start()
            return r


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    conn, n = None, 0
    created = False
    while True:
        if conn is None:
            conn = connect_racing()
            n += 1
            log("C", now_ms(), n)
        try:
            with conn.cursor() as cur:
                if not created:
                    cur.execute(
                        "create table if not exists pgfront_vip_test "
                        "(id bigserial primary key, at timestamptz not null default now(), conn int)"
                    )
                    created = True
                cur.execute("insert into pgfront_vip_test (conn) values (%s)", (n,))
            conn.commit()
            log("W", now_ms(), n)
        except Exception as e:  # noqa: BLE001
            log("E", now_ms(), n, type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "")
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
            conn = None
            continue
        time.sleep(INTERVAL)


if __name__ == "__main__":
    main()
