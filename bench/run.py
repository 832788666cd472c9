#!/usr/bin/env python3
"""bench/run.py -- Postel, the reference Postfix and smtp-sink (the ceiling) side by side, case by case.

Every case runs against each server it applies to, in an order that rotates from case to case, and prints its rows
of one table (README.md, "Benchmarks", says what the columns mean); at the end the table is written as CSV and drawn
as a PNG chart in bench/results/. The reference Postfix is the one `make bench-reference` sets up on 127.0.0.1:2525;
when none answers there the run says so and measures Postel and the ceiling only.

Benchmarks print numbers; they never fail on a timing. `make bench` takes a few minutes on 2 cores, --quick about
a minute. Environment: BENCH_DIR (default /var/tmp) holds the scratch spools; POSTEL_BENCH_BIN skips the build and
uses that binary.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import accept
import delivery
import load
import memory
import procstat
import reference
import relay
import report
import servers
import tls
from case import POSTFIX, Context

REPO = Path(__file__).resolve().parent.parent
CASES = accept.cases() + tls.cases() + delivery.cases() + relay.cases() + memory.cases()


def build():
    if os.environ.get("POSTEL_BENCH_BIN"):
        return Path(os.environ["POSTEL_BENCH_BIN"]).resolve()
    if subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO).returncode != 0:
        sys.exit("bench: cargo build --release failed")
    return REPO / "target" / "release" / "postel"


def median(results):
    """The run with the median rate (of an even number, the slower of the middle two)."""
    ordered = sorted(results, key=lambda result: result.rate)
    return ordered[(len(ordered) - 1) // 2]


def fs_type(path):
    done = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def measure(ctx, case, name):
    """One case against one server: (its Result or None when the case could not run, whether Postel panicked)."""
    try:
        server = ctx.start(name, case)
    except RuntimeError as e:
        print(f"  {name}: {e}")
        return None, False
    result = None
    try:
        result = case.measure(server, ctx)
    except RuntimeError as e:
        print(f"  {name}: {e}")
    finally:
        problems = server.stop()
    if result:
        result.notes += problems
    return result, getattr(server, "panicked", False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a second of traffic per case, for a smoke check")
    parser.add_argument("--seconds", type=float, help="seconds of traffic per case (default 4, 1 with --quick)")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="measure each case N times per server, the servers taking turns, and keep each "
                             "server's median run (by rate): on a VM whose neighbours steal CPU now and then, "
                             "one slow moment then moves no ratio")
    parser.add_argument("--only", action="append", metavar="KEY",
                        help="run only the cases whose key contains KEY (repeatable): "
                             + ", ".join(c.key for c in CASES))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where the CSV and PNG go")
    args = parser.parse_args()
    for tool in (load.SMTP_SOURCE, servers.SMTP_SINK, relay.DNSMASQ):
        if not os.access(tool, os.X_OK):
            sys.exit(f"bench: {tool} is missing: run tests/setup-tools.sh as root")
    cases = [c for c in CASES if not args.only or any(k in c.key for k in args.only)]
    if not cases:
        sys.exit("bench: no case matches --only")
    duration = args.seconds or (1.0 if args.quick else 4.0)

    binary = build()
    base = Path(tempfile.mkdtemp(prefix="postel-bench-", dir=os.environ.get("BENCH_DIR", "/var/tmp")))
    tls_kit = tls.Kit.make(REPO, base)
    floor = servers.build_tool(REPO, "floor")
    postfix, why_not = servers.Reference.find()
    print(f"postel: {binary}, scratch spools in {base} ({fs_type(base)})")
    if postfix:
        print(f"postfix: the reference on {postfix.addr}, queue {reference.QUEUE_DIR} "
              f"({fs_type(reference.QUEUE_DIR)}), mailboxes {reference.MAIL_SPOOL}")
    else:
        print(f"postfix: {why_not}: Postel and the ceiling only")
    rounds = f", the median of {args.rounds} runs" if args.rounds > 1 else ""
    print(f"{os.cpu_count()} CPUs, {duration:g} s of smtp-source traffic per case and server{rounds}, 1 KiB "
          "messages unless the case says otherwise\n")

    ctx = Context(binary, tls_kit, floor, base, postfix, duration)
    all_rows, keep = [], False
    started = time.monotonic()
    try:
        if postfix:  # its daemons start on demand: let them be there before the first case
            load.send(postfix.addr, [load.Stream(5, 200, reuse=True)], 0)
            procstat.wait_idle(postfix)
        print(report.header())
        for i, case in enumerate(cases):
            names = [n for n in case.servers if n != POSTFIX or postfix]
            names = names[i % len(names):] + names[:i % len(names)]
            runs = {name: [] for name in names}
            for _ in range(max(1, args.rounds)):
                for name in names:
                    result, panicked = measure(ctx, case, name)
                    keep |= panicked
                    if result:
                        runs[name].append(result)
            results = {name: median(found) for name, found in runs.items() if found}
            found = report.rows(case, results)
            print("\n".join(report.lines(found)), flush=True)
            all_rows.extend(found)
    finally:
        ctx.close()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = args.out / "bench.csv", args.out / "bench.png"
    report.write_csv(csv_path, all_rows)
    title = (f"Postel, Postfix, the floor, the durable floor and smtp-sink, {os.cpu_count()} CPUs, "
             f"{duration:g} s per case{rounds}"
             f"{'' if postfix else ' (no reference Postfix)'}, {time.strftime('%Y-%m-%d %H:%M')}")
    try:
        report.draw(png_path, all_rows, title)
        drawn = f" and {png_path}"
    except ImportError:
        drawn = " (no chart: matplotlib is missing; sh bench/setup-tools.sh installs it)"
    print(f"\n{time.monotonic() - started:.0f} s; table in {csv_path}{drawn}")


if __name__ == "__main__":
    main()
