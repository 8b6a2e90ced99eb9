#!/usr/bin/env python3
"""A/B of two builds of the filter module on a busy machine (issue 7).

`run.py --wasm-b` measures (c) and (C) one after the other; when other work on the machine
comes and goes in bursts, consecutive runs meet different load and their Envoy CPU per
request differs by more than the change being measured. Here both Envoys run at the same
time, each under its own wrk with the same paced load (Lua `delay()`, bodies checked), so
whatever else runs on the machine hits A and B alike; rounds alternate which wrk starts
first. Reported per configuration and build: the median over rounds of Envoy CPU per
request (user+system time ÷ requests) and the median of the per-round differences B − A.

  .venv/bin/python benches/load/ab.py --wasm-a target/.../meshgate_wasm.wasm --wasm-b old.wasm

Uses run.py's configurations: (c) RBAC only and (d) the full pipeline, both rendered by
`meshgate bootstrap --static`; B is the same bootstrap with the other module.

`--side-by-side KEYS` instead runs run.py's configurations KEYS (e.g. `bfc`: bare Envoy,
the wasm floor, Meshgate RBAC only) all at once the same way, and reports each one's Envoy
CPU per request minus the first one's, per round.

Processes are started here and stopped here, by PID; ports are picked free by the OS.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the load benchmark's helpers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wasm-a", type=Path, default=run.WASM, help="module A (default: the current build)")
    parser.add_argument("--wasm-b", type=Path, default=None, help="module B")
    parser.add_argument("--side-by-side", default=None,
                        help="instead of A/B: run.py configuration keys measured at the same time, first = baseline")
    parser.add_argument("--only", default="cd", help="configurations: c, d or cd (default cd)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration", type=int, default=4, help="seconds per round (default 4)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--pause-ms", type=int, default=1,
                        help="mean random pause per connection between requests (default 1)")
    args = parser.parse_args()
    if (args.wasm_b is None) == (args.side_by_side is None):
        parser.error("give --wasm-b (A/B of two builds) or --side-by-side KEYS")

    with tempfile.TemporaryDirectory(prefix="meshgate-ab-") as tmp:
        workdir = Path(tmp)
        ready = workdir / "upstream.ready"
        upstream = run.start("upstream", [str(run.UPSTREAM), "--ready-file", str(ready)], workdir)
        live: list[run.Live] = []
        try:
            run.wait_until("the upstream's ready file", ready.exists, 10, upstream)
            port = json.loads(ready.read_text())["port"]
            secret = base64.urlsafe_b64encode(os.urandom(36)).decode()
            configs = {c.key: c for c in run.build_configs(workdir, port, secret, args.wasm_b)}
            pairs = []
            bring = argparse.Namespace(throughput_connections=args.connections, warmup=2)
            if args.side_by_side:
                for key in args.side_by_side:
                    print(f"== ({key}) {configs[key].label}: starting, checking, warming up", flush=True)
                    run.bring_up(configs[key], port, workdir, bring, live)
                return side_by_side(live, args)
            for key in args.only:
                a, b = configs[key], configs[key.upper()]
                if args.wasm_a != run.WASM:
                    a.bootstrap = run.with_module(a.bootstrap, args.wasm_a)
                for config in (a, b):
                    print(f"== ({config.key}) {config.label}: starting, checking, warming up", flush=True)
                    run.bring_up(config, port, workdir, bring, live)
                pairs.append((live[-2], live[-1]))
            cpu: dict[str, list[float]] = {}
            rps: dict[str, list[float]] = {}
            for round_no in range(1, args.rounds + 1):
                for a, b in pairs:
                    first, second = (a, b) if round_no % 2 else (b, a)
                    results: dict[str, run.Run] = {}

                    def go(item: run.Live) -> None:
                        results[item.config.key] = run.measure(item.url, args.connections, args.duration, item.config,
                                                               item.envoy, args.pause_ms)

                    threads = [threading.Thread(target=go, args=(item,)) for item in (first, second)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    if len(results) != 2:
                        raise SystemExit("a wrk run failed (see above)")
                    for item in (a, b):
                        r = results[item.config.key]
                        cpu.setdefault(item.config.key, []).append(r.envoy_cpu_us_per_req or float("nan"))
                        rps.setdefault(item.config.key, []).append(r.rps)
                    print(f"   round {round_no}: ({a.config.key}) {cpu[a.config.key][-1]:.1f} µs/req at "
                          f"{rps[a.config.key][-1]:,.0f} req/s; ({b.config.key}) {cpu[b.config.key][-1]:.1f} µs/req at "
                          f"{rps[b.config.key][-1]:,.0f} req/s", flush=True)
        finally:
            for item in live:
                if item.envoy is not None:
                    item.envoy.stop()
            upstream.stop()

    print(f"\nA = {args.wasm_a}, B = {args.wasm_b}; {args.rounds} rounds of {args.duration} s, wrk -c{args.connections} "
          f"with a random pause (mean {args.pause_ms} ms), A and B at the same time; load average now "
          + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    for a, b in pairs:
        ka, kb = a.config.key, b.config.key
        diffs = [y - x for x, y in zip(cpu[ka], cpu[kb])]
        print(f"({ka}) A: median {statistics.median(cpu[ka]):.1f} µs/req (min {min(cpu[ka]):.1f}), "
              f"{statistics.median(rps[ka]):,.0f} req/s | ({kb}) B: median {statistics.median(cpu[kb]):.1f} µs/req "
              f"(min {min(cpu[kb]):.1f}), {statistics.median(rps[kb]):,.0f} req/s | B − A per round: median "
              f"{statistics.median(diffs):+.1f} µs (range {min(diffs):+.1f} … {max(diffs):+.1f})")
    return 0


def side_by_side(live: list[run.Live], args: argparse.Namespace) -> int:
    """All of `live` under the same paced load at the same time, every round."""
    cpu: dict[str, list[float]] = {item.config.key: [] for item in live}
    for round_no in range(1, args.rounds + 1):
        results: dict[str, run.Run] = {}

        def go(item: run.Live) -> None:
            results[item.config.key] = run.measure(item.url, args.connections, args.duration, item.config, item.envoy,
                                                   args.pause_ms)

        order = live if round_no % 2 else list(reversed(live))
        threads = [threading.Thread(target=go, args=(item,)) for item in order]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(results) != len(live):
            raise SystemExit("a wrk run failed (see above)")
        for key, r in results.items():
            cpu[key].append(r.envoy_cpu_us_per_req or float("nan"))
        print(f"   round {round_no}: " + "; ".join(
            f"({k}) {results[k].envoy_cpu_us_per_req or 0:.1f} µs/req at {results[k].rps:,.0f} req/s" for k in cpu),
            flush=True)
    base = live[0].config.key
    print(f"\n{args.rounds} rounds of {args.duration} s, wrk -c{args.connections} with a random pause "
          f"(mean {args.pause_ms} ms), "
          "all at the same time; load average now " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    for item in live:
        k = item.config.key
        diffs = [x - y for x, y in zip(cpu[k], cpu[base])]
        print(f"({k}) {item.config.label}: median {statistics.median(cpu[k]):.1f} µs/req; minus ({base}) per round: "
              f"median {statistics.median(diffs):+.1f} µs (range {min(diffs):+.1f} … {max(diffs):+.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
