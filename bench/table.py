#!/usr/bin/env python3
"""Turn a bench/run.sh work directory into the Markdown report (medians, ratios, targets).

Usage: table.py WORK_DIRECTORY

Reads runs.tsv (one row per wrk run), facts.txt (key=value lines) and client-N.json from the
directory that bench/run.sh filled, and prints Markdown on stdout. Standard library only.
"""

import csv
import json
import pathlib
import statistics
import sys
import textwrap

MIB = 1024 * 1024
WIDTH = 100


def say(text, end="\n"):
    """Prints prose wrapped at WIDTH columns; a '- ' bullet continues two spaces in."""
    indent = "  " if text.startswith("- ") else ""
    print(textwrap.fill(text, WIDTH, subsequent_indent=indent, break_long_words=False,
                        break_on_hyphens=False), end=end)


def load(work):
    with open(work / "runs.tsv", newline="") as handle:
        runs = list(csv.DictReader(handle, delimiter="\t"))
    facts = {}
    for line in (work / "facts.txt").read_text().splitlines():
        key, _, value = line.partition("=")
        facts[key] = value
    clients = []
    for path in sorted(work.glob("client-*.json")):
        try:
            clients.append(json.loads(path.read_text()))
        except ValueError:
            clients.append(None)
    return runs, facts, clients


def final_attempts(runs):
    """The last attempt of every (phase, server, round): the ones that count."""
    last = {}
    for run in runs:
        key = (run["phase"], run["server"], run["round"])
        if key not in last or int(run["attempt"]) > int(last[key]["attempt"]):
            last[key] = run
    return list(last.values())


def steal_percent(run, clock_ticks):
    """The larger share of the run's wall time that the hypervisor took from either core (the
    server's or wrk's): time in which the guest's clock runs on and nothing in it does."""
    wall_seconds = int(run["wall_us"]) / 1e6
    if wall_seconds <= 0:
        return 0.0
    ticks = max(int(run["core_steal_ticks"]), int(run["client_core_steal_ticks"]))
    return ticks / clock_ticks / wall_seconds * 100


def summarise(runs, clock_ticks):
    """(phase, server) -> medians of the per-run figures."""
    groups = {}
    for run in final_attempts(runs):
        requests = float(run["requests"] or 0) or float("nan")
        figures = {
            "rps": float(run["rps"]),
            "p50": float(run["p50_ms"]),
            "p99": float(run["p99_ms"]),
            "errors": float(run["errors"]),
            "cpu_us": int(run["cpu_ticks"]) / clock_ticks * 1e6 / requests,
            "noise": float(run["noise_percent"]),
            "steal": steal_percent(run, clock_ticks),
            "ctx": (int(run["ctx_voluntary"]) + int(run["ctx_involuntary"])) / requests,
            "ctx_involuntary": int(run["ctx_involuntary"]) / requests,
            "rss_mib": int(run["rss_peak_kib"]) / 1024,
            "threads": float(run["threads_peak"]),
            "log_lag": float(run["log_lag"]) if run["log_lag"] not in ("", "-") else None,
        }
        groups.setdefault((int(run["phase"]), run["server"]), []).append(figures)
    medians = {}
    for key, rows in groups.items():
        medians[key] = {
            name: statistics.median(row[name] for row in rows)
            for name in rows[0]
            if rows[0][name] is not None
        }
        medians[key]["rounds"] = len(rows)
        lags = [row["log_lag"] for row in rows if row["log_lag"] is not None]
        medians[key]["log_lag_max"] = max(lags) if lags else None
    return medians


def number(value, digits=2):
    if value is None:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def ratio(a, b):
    return f"{a / b:.2f}x" if b else "n/a"


def print_main_table(medians, facts, runs):
    phases = sorted({phase for phase, _ in medians})
    print(
        f"### Throughput and cost per request (wrk -t1 -c{facts.get('connections')} "
        f"-d{facts.get('duration')} --latency; medians of {facts.get('rounds')} rounds)\n"
    )
    print("| hung conns | server | req/s | p50 ms | p99 ms | errors | CPU µs/req | ctx sw/req "
          "| peak RSS MiB | peak threads | noise % | steal % |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    names = ["rps", "p50", "p99", "errors", "cpu_us", "ctx", "rss_mib", "threads", "noise",
             "steal"]
    digits = {"errors": 0, "threads": 0, "rss_mib": 1, "ctx": 3, "noise": 0, "steal": 1}
    for phase in phases:
        rows = {server: medians.get((phase, server)) for server in ("unreliable", "nginx")}
        for server, row in rows.items():
            if row:
                cells = [number(row[name], digits.get(name, 2)) for name in names]
                print(f"| {phase:,} | {server} | " + " | ".join(cells) + " |")
        if rows["unreliable"] and rows["nginx"]:
            u, n = rows["unreliable"], rows["nginx"]
            cells = [ratio(u[name], n[name]) if name not in ("errors", "noise", "steal") else ""
                     for name in names]
            print(f"| {phase:,} | **unreliable / nginx** | " + " | ".join(cells) + " |")
    retried = len(runs) - len(final_attempts(runs))
    print()
    say(f"noise %: the larger share of either core's time taken by anything but the server "
          f"under test (on its core) or wrk (on its core): other processes, hypervisor steal; "
          f"from /proc/stat, wrk's own CPU from bash `times`; a run above "
          f"{facts.get('max_noise_percent')}% noise or {facts.get('max_steal_percent', '?')}% "
          f"steal was repeated (at most {facts.get('noise_retries')} times, the last attempt "
          f"counts): {retried} repeats this time. CPU µs/req is "
          f"utime+stime of the server's process(es) / requests wrk completed; nginx is master + "
          f"worker. steal %: the part of the noise that the hypervisor took (the larger of the "
          f"two cores). Ratios are unreliable / nginx: below 1x is better for everything but "
          f"req/s.", end="\n\n")


CALM_STEAL_PERCENT = 1.0


def runs_text(count):
    return f"{count} run" if count == 1 else f"{count} runs"


def calm_p99(runs, clock_ticks, phase, server):
    """(median p99, run count) over every attempt of (phase, server), retried ones included,
    in which the hypervisor took under CALM_STEAL_PERCENT of both cores; (None, 0) if none."""
    values = [float(run["p99_ms"]) for run in runs
              if int(run["phase"]) == phase and run["server"] == server
              and steal_percent(run, clock_ticks) < CALM_STEAL_PERCENT]
    return (statistics.median(values), len(values)) if values else (None, 0)


def print_p99_and_steal(runs, clock_ticks):
    """Every wrk run's p99 beside the steal in it. At saturation a request's latency is set by
    pauses, and a vCPU the hypervisor takes away is one: all 64 requests in flight wait it out."""
    print("### p99 and hypervisor steal (every attempt, retried ones included)\n")
    print("| hung conns | server | p99 ms (steal %) per run, by steal | median p99, runs with "
          f"steal < {CALM_STEAL_PERCENT:g}% | median p99, the others |")
    print("| ---: | --- | --- | ---: | ---: |")
    keys = sorted({(int(run["phase"]), run["server"]) for run in runs},
                  key=lambda key: (key[0], key[1] != "unreliable"))
    for phase, server in keys:
        pairs = sorted((steal_percent(run, clock_ticks), float(run["p99_ms"])) for run in runs
                       if int(run["phase"]) == phase and run["server"] == server)
        listed = ", ".join(f"{p99:.2f} ({steal:.1f})" for steal, p99 in pairs)
        calm, count = calm_p99(runs, clock_ticks, phase, server)
        others = [p99 for steal, p99 in pairs if steal >= CALM_STEAL_PERCENT]
        calm_text = f"{calm:.2f} ({runs_text(count)})" if count else "no such run"
        others_text = (f"{statistics.median(others):.2f} ({runs_text(len(others))})" if others
                       else "no such run")
        print(f"| {phase:,} | {server} | {listed} | {calm_text} | {others_text} |")
    print()


def print_syscalls(facts):
    if not any(key.startswith("syscalls_") for key in facts):
        return
    print("### Syscalls per request (wrk -t1 -c64 for a few seconds, under perf stat, then strace -c -f)\n")
    print("| server | all syscalls/req (perf stat) | all syscalls/req (strace -c -f) "
          "| top syscalls/req (strace) |")
    print("| --- | ---: | ---: | --- |")
    for server in ("unreliable", "nginx"):
        print(f"| {server} | {facts.get('syscalls_perf_' + server, 'n/a')} "
              f"| {facts.get('syscalls_strace_' + server, 'n/a')} "
              f"| {facts.get('syscalls_top_' + server, 'n/a')} |")
    print()


def client_rows(clients, facts):
    rows = []
    for index, document in enumerate(clients, start=1):
        wall = float(facts.get(f"client_wall_{index}", "nan"))
        status = facts.get(f"client_status_{index}", "?")
        if document is None:
            rows.append({"wall": wall, "status": status, "ok": False})
            continue
        reconciliation = document["reconciliation"]
        rows.append({
            "wall": wall,
            "status": status,
            "elapsed": document["elapsed_seconds"],
            "attempts": document["attempts"]["total"],
            "attempts_per_second": document["attempts_per_second"],
            "precision": document["attempts"]["precision_points"],
            "clean": reconciliation["clean"],
            "mismatches": len(reconciliation["mismatches"]),
            "verdict": document["verdict"],
            "violations": document["tolerance_violations"],
            "ok": True,
        })
    return rows


def print_client(rows):
    if not rows:
        return
    print("### Client (`client --count 10000 --concurrency 64 --timeout 200ms --tolerance 1`, "
          "default weights)\n")
    print("| run | wall s | attempts | attempts/s | ± points (95%) | reconciled | mismatches "
          "| verdict | exit |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: |")
    for index, row in enumerate(rows, start=1):
        if not row["ok"]:
            print(f"| {index} | {row['wall']:.2f} | no JSON report | | | | | | {row['status']} |")
            continue
        print(f"| {index} | {row['wall']:.2f} | {row['attempts']:,} | "
              f"{row['attempts_per_second']:,.0f} | {row['precision']:.2f} | "
              f"{'yes' if row['clean'] else 'NO'} | {row['mismatches']} | {row['verdict']} "
              f"| {row['status']} |")
    print()


def log_memory(facts):
    """(MiB of RSS at capacity entries, bytes per entry, how it was obtained) or None."""
    if "logcap_rss_after_kib" not in facts:
        return None
    capacity = int(facts["logcap_capacity"])
    before = min(int(facts["logcap_entries_before"]), capacity)
    after_entries = int(facts["logcap_entries_after"])
    after = min(after_entries, capacity)
    rss_before = int(facts["logcap_rss_before_kib"]) * 1024
    rss_after = int(facts["logcap_rss_after_kib"]) * 1024
    per_entry = (rss_after - rss_before) / max(1, after - before)
    if after_entries >= capacity:
        return rss_after / MIB, per_entry, (
            f"measured: {after_entries:,} requests pushed, {capacity:,} entries in memory")
    projected = rss_before + per_entry * (capacity - before)
    return projected / MIB, per_entry, (
        f"extrapolated from {after_entries:,} entries ({per_entry:.0f} B of RSS per entry)")


def verdict(ok):
    return "**met**" if ok else "**missed**"


def print_targets(medians, facts, clients, runs, clock_ticks):
    print("### Targets\n")
    print("| # | target | measured | verdict |")
    print("| --- | --- | --- | --- |")
    base_u, base_n = medians.get((0, "unreliable")), medians.get((0, "nginx"))
    if base_u and base_n:
        cpu = base_u["cpu_us"] / base_n["cpu_us"]
        state = "met" if cpu <= 1.0 else ("missed (under the 1.5x cap)" if cpu <= 1.5
                                          else "missed (over the 1.5x cap)")
        print(f"| 1 | CPU per request ≤ 1.0x nginx (never > 1.5x) | {base_u['cpu_us']:.1f} vs "
              f"{base_n['cpu_us']:.1f} µs = {cpu:.2f}x | **{state}** |")
        rps = base_u["rps"] / base_n["rps"]
        print(f"| 2 | req/s ≥ nginx | {base_u['rps']:,.0f} vs {base_n['rps']:,.0f} = {rps:.2f}x "
              f"| {verdict(rps >= 1.0)} |")
    top = max((phase for phase, _ in medians), default=0)
    hung_u = medians.get((top, "unreliable"))
    if top and hung_u and base_u:
        limit = int(facts.get("expected_workers", "0")) + 4
        kept = hung_u["rps"] / base_u["rps"]
        print(f"| 3a | {top:,} hung: threads ≤ workers + 4 = {limit} | {hung_u['threads']:.0f} "
              f"| {verdict(hung_u['threads'] <= limit)} |")
        print(f"| 3b | {top:,} hung: RSS ≤ 64 MiB | {hung_u['rss_mib']:.1f} MiB "
              f"| {verdict(hung_u['rss_mib'] <= 64)} |")
        print(f"| 3c | {top:,} hung: ≥ 90% of the throughput | {hung_u['rps']:,.0f} of "
              f"{base_u['rps']:,.0f} = {kept:.0%} | {verdict(kept >= 0.9)} |")
        calm, count = calm_p99(runs, clock_ticks, top, "unreliable")
        calm_text = (f"; {calm:.2f} ms over the {runs_text(count)} with steal < "
                     f"{CALM_STEAL_PERCENT:g}%"
                     if count else f"; no run had steal < {CALM_STEAL_PERCENT:g}%")
        print(f"| 3d | {top:,} hung: p99 ≤ 2 ms | {hung_u['p99']:.2f} ms (median){calm_text} "
              f"| {verdict(hung_u['p99'] <= 2.0)} |")
    memory = log_memory(facts)
    if memory:
        mib, per_entry, how = memory
        print(f"| 4a | {int(facts['logcap_capacity']):,} log entries in memory ≤ 64 MiB | "
              f"RSS {mib:.1f} MiB ({per_entry:.0f} B/entry; {how}) | {verdict(mib <= 64)} |")
    pairs = []
    for key, value in facts.items():
        if key.startswith("log_requests_"):
            suffix = key[len("log_requests_"):]
            pairs.append((f"{int(suffix):,} hung", int(value), int(facts[f"log_lines_{suffix}"])))
    if "logcap_file_lines" in facts:
        pairs.append(("log memory", int(facts["logcap_entries_after"]),
                      int(facts["logcap_file_lines"])))
    if pairs:
        text = "; ".join(f"{name}: {lines:,} lines / {requests:,} requests"
                         for name, requests, lines in pairs)
        lags = [row.get("log_lag_max") for (_, server), row in medians.items()
                if server == "unreliable" and row.get("log_lag_max") is not None]
        if lags:
            text += f"; lag 200 ms after a run: at most {max(lags):,.0f} lines"
        ok = all(lines == requests for _, requests, lines in pairs)
        print(f"| 4b | log file lines == requests | {text} | {verdict(ok)} |")
    rows = client_rows(clients, facts)
    if rows:
        good = [row for row in rows if row["ok"]]
        wall = statistics.median(row["wall"] for row in rows)
        ok = (len(good) == len(rows) and wall <= 10.0
              and all(row["attempts"] >= 10000 and row["precision"] <= 1.0 and row["clean"]
                      and row["mismatches"] == 0 and row["verdict"] == "pass" for row in good))
        detail = ", ".join(
            f"{row['attempts']:,} attempts ±{row['precision']:.2f} pt "
            f"{'clean' if row['clean'] else 'NOT clean'} {row['mismatches']} mismatches"
            for row in good)
        print(f"| 5 | client: ±1 point, ≥ 10,000 attempts, ≤ 10 s, 0 mismatches | median wall "
              f"{wall:.2f} s; {detail} | {verdict(ok)} |")
    for name in ("gnu", "musl"):
        text = facts.get(f"startup_{name}")
        if text:
            fields = dict(part.split("=") for part in text.split())
            median = float(fields["median_ms"])
            print(f"| 6a | start-up to 'listening on' ≤ 10 ms ({name} build) | median "
                  f"{median:.2f} ms (min {float(fields['min_ms']):.2f}, max "
                  f"{float(fields['max_ms']):.2f}) | {verdict(median <= 10)} |")
    if "binary_size_musl" in facts:
        size = int(facts["binary_size_musl"])
        print(f"| 6b | static musl binary ≤ 1 MiB after strip | {size:,} B = {size / MIB:.2f} MiB "
              f"({facts.get('binary_static', '?')}) | {verdict(size <= MIB)} |")
    print()


def print_profiles(work):
    for server in ("unreliable", "nginx"):
        top = work / f"perf-top-{server}.txt"
        threads = work / f"perf-threads-{server}.txt"
        if top.exists() and top.read_text().strip():
            print(f"<details><summary>perf record, {server}: top symbols (self time)</summary>\n")
            print("```")
            if threads.exists():
                print(threads.read_text().rstrip())
                print()
            print(top.read_text().rstrip())
            print("```\n</details>\n")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    work = pathlib.Path(sys.argv[1])
    runs, facts, clients = load(work)
    clock_ticks = int(facts.get("clock_ticks", "100"))
    medians = summarise(runs, clock_ticks)
    print("## Results\n")
    say(f"- machine: {facts.get('cpu')}, nproc {facts.get('nproc')}, "
          f"{facts.get('memory_mib')} MiB, kernel {facts.get('kernel')}, {facts.get('os')}")
    say(f"- software: {facts.get('rustc')}; nginx {facts.get('nginx')}; {facts.get('wrk')}; "
          f"unreliable at {facts.get('commit')}")
    say(f"- servers pinned to core {facts.get('server_core')}, wrk/perf/strace/helpers to core "
          f"{facts.get('client_core')}; unreliable's default workers there: "
          f"{facts.get('expected_workers')}; open-file limit {facts.get('open_file_limit')}; "
          f"load average at the start {facts.get('load_average')}")
    say(f"- page: unreliable's 200 body is {facts.get('body_min')}–{facts.get('body_max')} B "
          f"(median {facts.get('body_median')}, head {facts.get('head_unreliable')} B); "
          f"nginx returns {facts.get('body_median')} B")
    print()
    print_main_table(medians, facts, runs)
    print_p99_and_steal(runs, clock_ticks)
    print_syscalls(facts)
    memory = log_memory(facts)
    if memory:
        say(f"Log memory: RSS {int(facts['logcap_rss_before_kib']) / 1024:.1f} MiB with "
              f"{int(facts['logcap_entries_before']):,} entries, "
              f"{int(facts['logcap_rss_after_kib']) / 1024:.1f} MiB after "
              f"{int(facts['logcap_entries_after']):,} requests (peak "
              f"{int(facts['logcap_hwm_kib']) / 1024:.1f} MiB, {facts['logcap_seconds']} s of wrk); "
              f"{memory[2]}.", end="\n\n")
    for level in sorted(key for key in facts if key.startswith("held_at_end_")):
        print(f"- {level.replace('held_at_end_', 'held at the end, ')}: {facts[level]}")
    print()
    print_client(client_rows(clients, facts))
    print_targets(medians, facts, clients, runs, clock_ticks)
    print_profiles(work)


if __name__ == "__main__":
    main()
