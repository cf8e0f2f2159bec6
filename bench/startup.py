#!/usr/bin/env python3
"""Time `unreliable serve` from exec to its 'listening on' line, for the benchmark.

Usage: startup.py RUNS BINARY [SERVE ARGUMENTS...]

Starts `BINARY serve --port 0 SERVE ARGUMENTS` RUNS times; each time measures from just before
the exec (the clock starts before fork, so fork and exec are included) to reading the
'listening on' line from its stdout, then stops the server with SIGTERM and waits for it.
Prints one line per run in milliseconds, then `median_ms=M min_ms=A max_ms=B`.
Standard library only.
"""

import statistics
import subprocess
import sys
import time


def time_one(command):
    started = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        for line in server.stdout:
            if line.startswith(b"listening on"):
                return (time.perf_counter() - started) * 1000.0
        sys.exit(f"startup.py: the server exited without a 'listening on' line: {command}")
    finally:
        server.terminate()
        server.wait(timeout=10)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    runs, binary = int(sys.argv[1]), sys.argv[2]
    command = [binary, "serve", "--port", "0", *sys.argv[3:]]
    times = []
    for _ in range(runs):
        times.append(time_one(command))
        print(f"{times[-1]:.3f}", flush=True)
    print(f"median_ms={statistics.median(times):.3f} min_ms={min(times):.3f} max_ms={max(times):.3f}")


if __name__ == "__main__":
    main()
