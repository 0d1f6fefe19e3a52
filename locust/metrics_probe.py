#!/usr/bin/env python3
"""Server-side latency of a load run, from the api's /metrics.

Reads ``http_request_duration_seconds`` before and after a run, subtracts the
bucket counts, and prints per route the requests the server saw and its p50,
p95 and p99 (interpolated inside a bucket, as Prometheus' histogram_quantile
does), beside locust's client-side numbers when locust's stats file
(``--csv``) or JSON (``--json-file``) output is given. The difference between
the two is the network and the client (for locust, Python and gevent).

Standard library only, so it runs wherever python3 does.

Usage:

    # around any command (usually locust); the command's exit code is kept
    metrics_probe.py run --url http://127.0.0.1:8000/metrics --locust-json out/run.json -- \\
        locust -f locust/locustfile.py --headless -u 20 -r 10 -t 20s --host http://127.0.0.1:8000 \\
            --json-file out/run --csv out/run

    # or by hand
    metrics_probe.py snapshot --url http://127.0.0.1:8000/metrics --out before.json
    ... run the load ...
    metrics_probe.py report --before before.json --url http://127.0.0.1:8000/metrics --locust-csv out/run_stats.csv

``--check`` makes it exit 1 when, for a route both sides know, the server
counted fewer requests than locust sent (the histogram lost requests).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import subprocess
import sys
import time
import urllib.request

HISTOGRAM = "http_request_duration_seconds"
QUANTILES = (0.5, 0.95, 0.99)

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


# --- exposition parsing ---------------------------------------------------------------------


def _unescape(value: str) -> str:
    return value.replace("\\\\", "\0").replace('\\"', '"').replace("\\n", "\n").replace("\0", "\\")


def parse_labels(text: str) -> dict[str, str]:
    labels, pos = {}, 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        if not match:
            if text[pos:].strip():
                raise ValueError(f"cannot parse labels {{{text}}}")
            break
        labels[match.group(1)] = _unescape(match.group(2))
        pos = match.end()
    return labels


def parse_exposition(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text exposition: (name, labels, value)."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise ValueError(f"cannot parse sample line {line!r}")
        name, _, labels, value, _ = match.groups()
        samples.append((name, parse_labels(labels or ""), float(value)))
    return samples


Key = tuple[str, str]  # (method, route)


def histograms(samples) -> dict[Key, dict]:
    """The request histogram summed over status codes, per (method, route):
    {"buckets": {le: cumulative count}, "count": n, "sum": seconds}."""
    out: dict[Key, dict] = {}
    for name, labels, value in samples:
        if not name.startswith(HISTOGRAM):
            continue
        key = (labels.get("method", "?"), labels.get("route", "?"))
        h = out.setdefault(key, {"buckets": {}, "count": 0.0, "sum": 0.0})
        if name == HISTOGRAM + "_bucket":
            le = float(labels["le"])  # "+Inf" parses to inf
            h["buckets"][le] = h["buckets"].get(le, 0.0) + value
        elif name == HISTOGRAM + "_count":
            h["count"] += value
        elif name == HISTOGRAM + "_sum":
            h["sum"] += value
    return out


def delta(before: dict[Key, dict], after: dict[Key, dict]) -> dict[Key, dict]:
    """after − before, per route; routes with no new request are left out."""
    out = {}
    for key, h in after.items():
        b = before.get(key, {"buckets": {}, "count": 0.0, "sum": 0.0})
        count = h["count"] - b["count"]
        if count <= 0:
            continue
        out[key] = {
            "buckets": {le: n - b["buckets"].get(le, 0.0) for le, n in h["buckets"].items()},
            "count": count,
            "sum": h["sum"] - b["sum"],
        }
    return out


def quantile(q: float, buckets: dict[float, float]) -> float:
    """histogram_quantile(q) over cumulative buckets {le: count}, in seconds."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return math.nan
    total = buckets[bounds[-1]]
    if total <= 0:
        return math.nan
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                # Above the highest finite bucket: its bound is the best answer.
                return bounds[-2] if len(bounds) > 1 else math.nan
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return math.nan


# --- locust's --csv stats ---------------------------------------------------------------------


def read_locust_stats(path: str) -> dict[Key, dict]:
    """Rows of locust's <prefix>_stats.csv by (method, name); times in ms."""
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Name") == "Aggregated":
                continue

            def num(col: str) -> float:
                value = row.get(col, "")
                return float(value) if value not in ("", "N/A") else math.nan

            rows[(row.get("Type", ""), row["Name"])] = {
                "requests": int(num("Request Count")),
                "failures": int(num("Failure Count")),
                "p50": num("50%"),
                "p95": num("95%"),
                "p99": num("99%"),
            }
    return rows


def read_locust_json(path: str) -> dict[Key, dict]:
    """Entries of locust's --json-file output (<name>.json) by (method, name).
    It holds every response time (rounded ms → count), so the percentiles are
    computed here the way locust computes them, from final counts."""
    with open(path) as f:
        entries = json.load(f)
    rows = {}
    for e in entries:
        times = {int(float(k)): v for k, v in (e.get("response_times") or {}).items()}
        n = e.get("num_requests", 0)
        rows[(e.get("method") or "", e["name"])] = {
            "requests": n,
            "failures": e.get("num_failures", 0),
            **{f"p{int(q * 100)}": float(locust_percentile(times, n, q)) for q in QUANTILES},
        }
    return rows


def locust_percentile(times: dict[int, int], n: int, q: float) -> int:
    """locust.stats.calculate_response_time_percentile."""
    target, seen = int(n * q), 0
    for t in sorted(times, reverse=True):
        seen += times[t]
        if n - seen <= target:
            return t
    return 0


# --- report ---------------------------------------------------------------------------------------


def fetch(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode("utf-8")


def snapshot(url: str) -> dict:
    return {"time": time.time(), "text": fetch(url)}


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def _num(value: float) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else f"{value:.0f}" if isinstance(value, float) else str(value)


def report(before: dict, after: dict, client: dict[Key, dict], include_metrics_route: bool = False) -> tuple[str, list[str]]:
    """The comparison table, and the routes whose server count is short of locust's."""
    elapsed = max(after["time"] - before["time"], 1e-9)
    server = delta(histograms(parse_exposition(before["text"])), histograms(parse_exposition(after["text"])))
    if not include_metrics_route:
        server.pop(("GET", "/metrics"), None)
    keys = sorted(set(server) | set(client), key=lambda k: (k[1], k[0]))
    header = (
        f"{'route':44} {'server n':>9} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
        + (f" | {'locust n':>9} {'fails':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}" if client else "")
    )
    lines = [f"server-side latency from {HISTOGRAM} over {elapsed:.1f} s (bucket deltas)", header, "-" * len(header)]
    short = []
    for key in keys:
        s, c = server.get(key), client.get(key)
        label = f"{key[0]} {key[1]}"
        if s:
            q = [quantile(x, s["buckets"]) for x in QUANTILES]
            left = f"{label:44} {s['count']:>9.0f} {s['count'] / elapsed:>8.1f} " + " ".join(f"{_ms(v):>8}" for v in q)
        else:
            left = f"{label:44} {'-':>9} {'-':>8} {'-':>8} {'-':>8} {'-':>8}"
        if client:
            if c:
                left += f" | {c['requests']:>9} {c['failures']:>6} " + " ".join(
                    f"{_num(c[p]):>8}" for p in ("p50", "p95", "p99")
                )
            else:
                left += f" | {'-':>9} {'-':>6} {'-':>8} {'-':>8} {'-':>8}"
        lines.append(left)
        if s and c and s["count"] < c["requests"]:
            short.append(f"{label}: server counted {s['count']:.0f}, locust sent {c['requests']}")
        if c and not s and c["requests"]:
            lines.append(f"  note: no server-side series for {label} (the api labels unknown routes 'unmatched')")
    if client:
        lines.append("locust's times are whole milliseconds, rounded to 2 significant digits above 100 ms.")
    return "\n".join(lines), short


# --- command line ---------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_snap = sub.add_parser("snapshot", help="save /metrics (with a timestamp) to a file")
    p_snap.add_argument("--url", required=True)
    p_snap.add_argument("--out", required=True)

    for name, help_text in (("report", "compare a saved snapshot with now (or another snapshot)"),
                            ("run", "snapshot, run a command, snapshot, report")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--url", required=name == "run", help="the api's /metrics URL")
        p.add_argument("--locust-csv", help="locust's <prefix>_stats.csv (from --csv <prefix>), for the client-side columns")
        p.add_argument("--locust-json", help="locust's <name>.json (from --json-file <name>): exact final counts; wins over --locust-csv")
        p.add_argument("--include-metrics-route", action="store_true", help="also show GET /metrics itself")
        p.add_argument("--check", action="store_true", help="exit 1 if the server counted fewer requests than locust sent")
        if name == "report":
            p.add_argument("--before", required=True, help="a file written by `snapshot`")
            p.add_argument("--after", help="a second snapshot file (default: read --url now)")
        else:
            p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command to run")

    args = parser.parse_args(argv)
    if args.command == "snapshot":
        with open(args.out, "w") as f:
            json.dump(snapshot(args.url), f)
        return 0

    status = 0
    if args.command == "run":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("run needs a command after --")
        before = snapshot(args.url)
        status = subprocess.call(cmd)
        after = snapshot(args.url)
    else:
        with open(args.before) as f:
            before = json.load(f)
        if args.after:
            with open(args.after) as f:
                after = json.load(f)
        elif args.url:
            after = snapshot(args.url)
        else:
            parser.error("report needs --after or --url")

    client = {}
    if args.locust_json:
        client = read_locust_json(args.locust_json)
    elif args.locust_csv:
        client = read_locust_stats(args.locust_csv)
    table, short = report(before, after, client, args.include_metrics_route)
    print(table)
    if short:
        print("server-side counts short of locust's:\n  " + "\n  ".join(short), file=sys.stderr)
        if args.check:
            status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
