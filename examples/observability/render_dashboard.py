"""Render the panels of grafana-dashboard.json from one scrape of Envoy's /stats/prometheus.

Grafana is not needed (nor available offline here): this reads the same metric families the
dashboard queries and draws the same four panels with matplotlib, as totals since Envoy
started (a scrape is one point in time; Grafana shows rates over time).

    python examples/observability/render_dashboard.py --admin http://127.0.0.1:9901 --out docs/dashboard.png
    python examples/observability/render_dashboard.py --stats scrape.txt --out dashboard.png

tests/e2e/test_observability.py calls `render()` after scripted traffic through real Envoy
when MESHGATE_DASHBOARD_OUT is set; that is how docs/dashboard.png was produced.
"""

from __future__ import annotations

import argparse
import re
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

REFUSALS = ["denied", "unauthenticated", "rate_limited", "blocked", "invalid", "error"]
COLORS = {
    "allowed": "#3b8e5a",
    "redacted": "#5aa9e6",
    "denied": "#d1495b",
    "unauthenticated": "#8e5ea2",
    "rate_limited": "#edae49",
    "blocked": "#7a1e2c",
    "invalid": "#999999",
    "error": "#e07a1f",
}


def parse(text: str) -> Samples:
    samples: Samples = {}
    for line in text.splitlines():
        m = re.match(r"^(meshgate_\w+)\{(.*)\} (\S+)$", line)
        if m:
            samples[(m.group(1), frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2))))] = float(m.group(3))
    return samples


def family(samples: Samples, name: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(labels), v) for (n, labels), v in samples.items() if n == name]


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus histogram_quantile over cumulative (le, count) buckets."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return None
    rank, prev_le, prev_count = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_le, prev_count = le, count
    return prev_le


def render(samples: Samples, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(15, 9))
    fig.suptitle("Meshgate — MCP governance (from Envoy /stats/prometheus)", fontsize=14)

    # 1. Tool calls by tool and decision (stacked bars).
    ax = axes[0][0]
    by_tool: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for labels, v in family(samples, "meshgate_tool_calls"):
        by_tool[f"{labels['server']}/{labels['tool']}"][labels["decision"]] += v
    tools = sorted(by_tool)
    left = [0.0] * len(tools)
    for decision, color in COLORS.items():
        values = [by_tool[t].get(decision, 0.0) for t in tools]
        if any(values):
            ax.barh(tools, values, left=left, color=color, label=decision)
            left = [a + b for a, b in zip(left, values)]
    ax.set_title("Tool calls by tool and decision")
    ax.set_xlabel("calls")
    ax.legend(fontsize=8, loc="lower right")

    # 2. Refusals by decision.
    ax = axes[0][1]
    refusals: dict[str, float] = defaultdict(float)
    for labels, v in family(samples, "meshgate_requests"):
        if labels["decision"] in REFUSALS:
            refusals[labels["decision"]] += v
    names = [d for d in REFUSALS if refusals.get(d)]
    ax.bar(names, [refusals[d] for d in names], color=[COLORS[d] for d in names])
    ax.set_title("Refusals by decision")
    ax.set_ylabel("requests")

    # 3. Decision latency p50 / p99 per method.
    ax = axes[1][0]
    buckets: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for labels, v in family(samples, "meshgate_decision_time_us_bucket"):
        buckets[labels["method"]].append((float(labels["le"].replace("+Inf", "inf")), v))
    methods = sorted(m for m in buckets if quantile(0.5, buckets[m]) is not None)
    x = range(len(methods))
    ax.bar([i - 0.2 for i in x], [quantile(0.5, buckets[m]) for m in methods], width=0.4, label="p50", color="#5aa9e6")
    ax.bar([i + 0.2 for i in x], [quantile(0.99, buckets[m]) for m in methods], width=0.4, label="p99", color="#d1495b")
    ax.set_xticks(list(x), methods, rotation=20, fontsize=8)
    ax.set_title("Decision latency p50 / p99 (µs)")
    ax.set_ylabel("µs")
    ax.legend(fontsize=8)

    # 4. Redactions by tool and detector.
    ax = axes[1][1]
    redactions = sorted(
        (f"{l['server']}/{l['tool']} {l['detector']}", v) for l, v in family(samples, "meshgate_redactions")
    )
    ax.barh([k for k, _ in redactions], [v for _, v in redactions], color="#5aa9e6")
    ax.set_title("Redactions by tool and detector")
    ax.set_xlabel("values redacted")

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--admin", help="Envoy admin URL, e.g. http://127.0.0.1:9901")
    source.add_argument("--stats", type=Path, help="a saved /stats/prometheus scrape")
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"))
    args = parser.parse_args()
    if args.admin:
        with urllib.request.urlopen(f"{args.admin.rstrip('/')}/stats/prometheus", timeout=10) as r:
            text = r.read().decode()
    else:
        text = args.stats.read_text()
    render(parse(text), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
