#!/usr/bin/env bash
# Follows one market event through the stack in Jaeger:
#   1. POST /api/v1/publish-market-event (expects 202) with a `traceparent`
#      of its own, flagged sampled, so the trace is kept whatever sampler the
#      services use; the trace id is that of the `traceparent` response header
#      (00-<trace id>-<span id>-<flags>), which continues it;
#   2. polls Jaeger's query API, GET /api/traces/<trace id>, until the trace
#      holds a span from every expected service and every expected span
#      (the worker's job span and its cache write come last), or the time
#      runs out; without a traceparent header it falls back to the newest
#      trace of pricing-api (GET /api/traces?service=pricing-api&limit=1);
#   3. prints the trace as a tree: service, span name, duration.
# Exits 0 when the trace was found with every expected service, 1 otherwise.
#
# Environment:
#   API_URL           default http://127.0.0.1:8000
#   JAEGER_URL        default http://127.0.0.1:16686 (the UI's port also serves the query API)
#   EXPECT_SERVICES   default "pricing-api pricing-listener pricing-worker"
#                     (one trace crosses Redis to all three services)
#   EXPECT_SPANS      default "recalculate_prices process|BATCH HSET": span names,
#                     separated by "|", that must be in the trace too
#   TIMEOUT_SECS      default 30
#   ADMIN_TOKEN       sent as a bearer token when set
#   PRODUCT_ID        default P-1
set -euo pipefail

api="${API_URL:-http://127.0.0.1:8000}"
jaeger="${JAEGER_URL:-http://127.0.0.1:16686}"
expect="${EXPECT_SERVICES:-pricing-api pricing-listener pricing-worker}"
expect_spans="${EXPECT_SPANS:-recalculate_prices process|BATCH HSET}"
timeout_secs="${TIMEOUT_SECS:-30}"
product="${PRODUCT_ID:-P-1}"

for cmd in curl python3; do
  command -v "$cmd" >/dev/null || { echo "check-trace: $cmd is required" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

auth=()
[ -z "${ADMIN_TOKEN:-}" ] || auth=(-H "Authorization: Bearer $ADMIN_TOKEN")

# A sampled parent of our own: random trace and span ids, flags 01.
client_trace=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
client_span=$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')
body=$(printf '{"kind":"competitor_price_changed","product_ids":["%s"],"data":{"competitor":"acme","prices":{"%s":12.5}}}' \
  "$product" "$product")
echo "==> POST $api/api/v1/publish-market-event"
status=$(curl -sS -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' --max-time 10 \
  -H 'content-type: application/json' -H "traceparent: 00-$client_trace-$client_span-01" \
  "${auth[@]}" -d "$body" "$api/api/v1/publish-market-event") || {
  echo "check-trace: the api at $api did not answer" >&2
  exit 1
}
if [ "$status" != 202 ]; then
  echo "check-trace: expected 202, got $status: $(head -c 300 "$tmp/body")" >&2
  exit 1
fi

traceparent=$(tr -d '\r' <"$tmp/headers" | sed -n 's/^[Tt]raceparent:[[:space:]]*//p' | head -n 1)
trace_id=""
if [[ "$traceparent" =~ ^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$ ]]; then
  trace_id=${BASH_REMATCH[1]}
  echo "    traceparent $traceparent"
  echo "    trace id    $trace_id"
  echo "    UI          $jaeger/trace/$trace_id"
  if [ "$trace_id" != "$client_trace" ]; then
    echo "WARN: the api did not continue our traceparent ($client_trace): is a proxy rewriting it?"
  fi
  if [[ "$traceparent" == *-00 ]]; then
    echo "WARN: the trace is flagged not sampled, so no service exports it;" \
      "check OTEL_TRACES_SAMPLER (a parentbased_* sampler keeps our sampled traceparent)"
  fi
else
  echo "WARN: no valid traceparent header in the answer (got '${traceparent}');" \
    "falling back to the newest pricing-api trace"
fi

# Reads a Jaeger API answer on stdin; prints the tree of its first trace and
# exits 0 when every service in $1 (space-separated) has a span in it and
# every span name in $2 ("|"-separated) is there, 2 when some are missing,
# 3 when there is no trace.
show_trace() {
  python3 -c '
import json, sys

expected = sys.argv[1].split()
expected_spans = [n for n in sys.argv[2].split("|") if n]
try:
    traces = json.load(sys.stdin).get("data") or []
except ValueError:
    sys.exit(3)
if not traces:
    sys.exit(3)
trace = traces[0]
processes = {k: v.get("serviceName", "?") for k, v in (trace.get("processes") or {}).items()}
spans = {s["spanID"]: s for s in trace.get("spans", [])}
children = {}
for s in spans.values():
    parents = [r["spanID"] for r in s.get("references", []) if r.get("refType") == "CHILD_OF" and r["spanID"] in spans]
    children.setdefault(parents[0] if parents else None, []).append(s)

def walk(parent, depth):
    for s in sorted(children.get(parent, []), key=lambda s: s.get("startTime", 0)):
        service = processes.get(s.get("processID"), "?")
        ms = s.get("duration", 0) / 1000
        print("    %s%s: %s  (%.2f ms)" % ("  " * depth, service, s.get("operationName"), ms))
        walk(s["spanID"], depth + 1)

services = sorted(set(processes.values()))
print("trace %s: %d span(s) from %s" % (trace.get("traceID"), len(spans), ", ".join(services)))
walk(None, 0)
missing = [s for s in expected if s not in services]
names = {s.get("operationName") for s in spans.values()}
missing_spans = [n for n in expected_spans if n not in names]
if missing:
    print("    missing services: " + ", ".join(missing))
if missing_spans:
    print("    missing spans: " + ", ".join(missing_spans))
if missing or missing_spans:
    sys.exit(2)
' "$1" "$2"
}

if [ -n "$trace_id" ]; then
  url="$jaeger/api/traces/$trace_id"
else
  url="$jaeger/api/traces?service=pricing-api&limit=1&lookback=5m"
fi
echo "==> polling $url (up to ${timeout_secs} s) for: $expect; spans: $expect_spans"
deadline=$((SECONDS + timeout_secs))
rc=3
while :; do
  if curl -fsS --max-time 5 "$url" >"$tmp/trace.json" 2>/dev/null; then
    show_trace "$expect" "$expect_spans" <"$tmp/trace.json" >"$tmp/tree.txt" && rc=0 || rc=$?
    [ "$rc" -ne 0 ] || break
  fi
  [ $SECONDS -lt $deadline ] || break
  sleep 1
done

case $rc in
  0) cat "$tmp/tree.txt"; echo "check-trace: ok" ;;
  2) cat "$tmp/tree.txt"; echo "check-trace: the trace lacks some expected services or spans" >&2; exit 1 ;;
  *) echo "check-trace: no trace found at $url within ${timeout_secs} s" >&2; exit 1 ;;
esac
