#!/usr/bin/env python3
"""Hold N connections open against an HTTP server, one request each, for the benchmark.

Usage: hold.py PORT N [PATH]

Opens N connections to 127.0.0.1:PORT (only loopback, by design), sends on each one
`GET PATH` (default /getbalance) with `X-Unreliable-Outcome: timeout`, so `unreliable serve`
hangs every one of them whatever its weights; a server that ignores the header (nginx) answers
and then keeps the connection idle in keep-alive. Either way the server holds N open connections.

Prints `holding N` once every connection is open and its request sent, then a status line
`open=O answered=A closed=C` whenever it changes (at most once a second), and keeps the
connections until SIGTERM or SIGINT, then resets them (SO_LINGER 0), so that stopping it leaves
no N sockets in TIME_WAIT behind to weigh on the next measurement. Anything the server sends is
read and dropped.
Standard library only; raises its own open-file limit, since N can exceed the default 1024.
"""

import resource
import selectors
import signal
import socket
import struct
import sys
import time

HOST = "127.0.0.1"
CONNECT_TIMEOUT_SECONDS = 10.0
CONNECT_ATTEMPTS = 3


def raise_open_file_limit(needed):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return
        except (ValueError, OSError):
            sys.exit(f"hold.py: the open-file hard limit {hard} is below the {needed} needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def open_one(port, request):
    for attempt in range(CONNECT_ATTEMPTS):
        try:
            connection = socket.create_connection((HOST, port), timeout=CONNECT_TIMEOUT_SECONDS)
            connection.sendall(request)
            connection.setblocking(False)
            return connection
        except OSError:
            if attempt + 1 == CONNECT_ATTEMPTS:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    port, count = int(sys.argv[1]), int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) == 4 else "/getbalance"
    raise_open_file_limit(count + 64)

    stopping = False

    def stop(_signal, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    selector = selectors.DefaultSelector()
    for index in range(count):
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"X-Unreliable-Outcome: timeout\r\nX-Request-Id: bench-hold-{index}\r\n\r\n"
        ).encode()
        selector.register(open_one(port, request), selectors.EVENT_READ)
    print(f"holding {count}", flush=True)

    answered = closed = 0
    last_status, last_print = None, 0.0
    while not stopping:
        for key, _ in selector.select(timeout=0.5):
            try:
                data = key.fileobj.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                answered += data.count(b"HTTP/1.")
            else:
                selector.unregister(key.fileobj)
                key.fileobj.close()
                closed += 1
        status = f"open={count - closed} answered={answered} closed={closed}"
        now = time.monotonic()
        if status != last_status and now - last_print >= 1.0:
            print(status, flush=True)
            last_status, last_print = status, now
    print(f"open={count - closed} answered={answered} closed={closed}", flush=True)
    reset = struct.pack("ii", 1, 0)
    for key in list(selector.get_map().values()):
        try:
            key.fileobj.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
        except OSError:
            pass
        key.fileobj.close()


if __name__ == "__main__":
    main()
