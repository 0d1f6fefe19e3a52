#!/usr/bin/env python3
"""Static checks of the deployment files, for scripts/check-deploy and
scripts/smoke-stack (no Docker engine needed).

    validate.py compose     docker-compose.yml, and every file its services
                            extend (jaeger/compose.yml), against the compose-spec
                            schema, plus what this stack relies on (health checks,
                            depends_on conditions, volumes, ports, profiles) on
                            the services as compose resolves them, and that
                            Prometheus finds every replica on the ports the
                            services use
    validate.py dashboard   the Grafana dashboard: datasources, targets, layout,
                            and every metric name it uses is a known one that the
                            Rust sources export; writes the expressions as a
                            Prometheus rules file so `promtool check rules` can
                            parse them
    validate.py dockerfile  the Dockerfile and .dockerignore
    validate.py query-dashboard --prometheus URL
                            runs every dashboard expression against a live
                            Prometheus and reports which return data

Needs PyYAML, and jsonschema for `compose`. Exits 1 on any error; prints
WARN lines for what is allowed to be missing for now.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# --- metric names -------------------------------------------------------------------------------

#: Every series the dashboard may use, with its type. Histograms may be used
#: with their _bucket, _count and _sum suffixes.
KNOWN_METRICS: dict[str, str] = {
    # api (api/src/metrics.rs)
    "http_request_duration_seconds": "histogram",
    "cache_hits_total": "counter",
    "cache_misses_total": "counter",
    "redis_pool_connections": "gauge",
    "redis_pool_healthy_connections": "gauge",
    "redis_pool_command_errors_total": "counter",
    "events_published_total": "counter",
    # worker (worker/src/metrics.rs)
    "jobs_started_total": "counter",
    "jobs_finished_total": "counter",
    "job_duration_seconds": "histogram",
    "worker_busy_slots": "gauge",
    "worker_leases_held": "gauge",
    "queue_depth": "gauge",
    # listener (listener/src)
    "listener_events_received_total": "counter",
    "listener_events_rejected_total": "counter",
    "listener_jobs_enqueued_total": "counter",
    "listener_events_coalesced_total": "counter",
    "listener_publish_to_enqueue_seconds": "histogram",
    # Prometheus itself
    "up": "gauge",
}

#: Series still being written: missing from the sources or from a live
#: Prometheus, they are a warning; every other name is an error. Empty now:
#: the listener and the publish endpoint have landed.
PENDING_METRICS: set[str] = set()

#: What the dashboard must show (issue #7): each entry is a series that some
#: expression has to use.
REQUIRED_SERIES = {
    "request rate": "http_request_duration_seconds_count",
    "latency quantiles": "http_request_duration_seconds_bucket",
    "cache hits": "cache_hits_total",
    "cache misses": "cache_misses_total",
    "queue depth by state": "queue_depth",
    "job rate (started)": "jobs_started_total",
    "job rate (finished)": "jobs_finished_total",
    "job duration": "job_duration_seconds_bucket",
    "events per second": "listener_events_received_total",
}

SOURCE_DIRS = ("api/src", "worker/src", "listener/src", "shared/src")

#: Labels Prometheus puts on every scraped series itself (`job`: the scrape
#: job; `instance`: the target). An exporter's own label of the same name is
#: renamed `exported_<name>`, so grouping by it silently groups by the scrape
#: target instead. That is why the worker and listener call the job's name
#: `job_type`.
TARGET_LABELS = ("job", "instance")
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                "group_left", "group_right", "inf", "nan", "Inf", "NaN", "atan2"}


class Report:
    """Collects errors and warnings; prints them as they come."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.errors = 0

    def error(self, msg: str) -> None:
        self.errors += 1
        print(f"ERROR {self.what}: {msg}")

    def warn(self, msg: str) -> None:
        print(f"WARN  {self.what}: {msg}")

    def ok(self, msg: str) -> None:
        print(f"ok    {self.what}: {msg}")

    def check(self, cond: bool, msg: str) -> bool:
        if not cond:
            self.error(msg)
        return bool(cond)


def load_yaml(path: Path):
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def base_metric(name: str) -> str | None:
    """The known metric a series name belongs to, or None."""
    if name in KNOWN_METRICS:
        return name
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix) and KNOWN_METRICS.get(name[: -len(suffix)]) == "histogram":
            return name[: -len(suffix)]
    return None


def series_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (a lexical approximation:
    strings, label matchers, ranges and grouping clauses are removed first;
    an identifier followed by "(" is a function)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        if m.start() > 0 and (s[m.start() - 1].isdigit() or s[m.start() - 1] in ".$"):
            continue  # part of a number (1e9) or a Grafana variable
        if s[m.end():].lstrip().startswith("(") or m.group(0) in PROMQL_WORDS:
            continue
        names.add(m.group(0))
    return names


def rust_sources():
    """(path, text) of every Rust source file under SOURCE_DIRS."""
    for d in SOURCE_DIRS:
        for p in sorted((ROOT / d).rglob("*.rs")):
            yield p, p.read_text(errors="replace")


def exported_by_sources() -> set[str]:
    """Known metric names that appear as string literals in the Rust sources."""
    text = "".join(t for _, t in rust_sources())
    return {name for name in KNOWN_METRICS if f'"{name}"' in text}


def target_labels_in_sources() -> list[str]:
    """`file:line` of every metrics label (`"name" => value`) in the Rust
    sources that is named like one of TARGET_LABELS."""
    pattern = re.compile(r'"(%s)"\s*=>' % "|".join(TARGET_LABELS))
    return [f"{p.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1} ({m.group(1)})"
            for p, text in rust_sources() for m in pattern.finditer(text)]


def labels_named(expr: str) -> set[str]:
    """Label names a PromQL expression groups by, joins on or matches on."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", s):
        names |= {n.strip() for n in m.group(1).split(",") if n.strip()}
    for m in re.finditer(r"\{([^}]*)\}", s):
        names |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(1)))
    return names


# --- compose ------------------------------------------------------------------------------------------

_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^}]*\})*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env: dict[str, str]):
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        current = env.get(name)
        if op in (":-", "-"):
            unset = current is None or (op == ":-" and current == "")
            return interpolate(arg, env) if unset else current
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise ValueError(f"required variable {name} is unset: {arg}")
            return current
        if op in (":+", "+"):
            return interpolate(arg, env) if current else ""
        return current or ""

    return _VAR.sub(sub, value)


def env_map(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def port_of(addr: str) -> int | None:
    m = re.search(r":(\d+)$", addr or "")
    return int(m.group(1)) if m else None


def seconds(duration) -> float | None:
    """A compose duration ("40s", "1m30s", "1h") in seconds, or None."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", str(duration))
    if not parts or "".join(n + u for n, u in parts) != str(duration):
        return None
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def depends(service: dict) -> dict[str, str]:
    d = service.get("depends_on") or {}
    if isinstance(d, list):
        return {name: "service_started" for name in d}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in d.items()}


APP_SERVICES = {"api": "API_ADDR", "worker": "WORKER_METRICS_ADDR", "listener": "LISTENER_METRICS_ADDR"}

#: Keys a service that `extends` another replaces rather than merges (the
#: compose spec's merge rules); other sequences are concatenated and mappings
#: merged key by key.
REPLACED_ON_MERGE = {"command", "entrypoint", "test"}


def load_compose(path: Path, schema: dict, r: Report) -> dict:
    """A compose file, interpolated as `docker compose config` would with no
    variables set, and checked against the compose-spec schema."""
    import jsonschema

    doc = interpolate(load_yaml(path), {})
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path))
    for e in errors:
        r.error(f"schema: {os.path.relpath(path.resolve(), ROOT)}: {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}")
    if not errors:
        r.ok(f"{os.path.relpath(path.resolve(), ROOT)}: valid against the schema ({schema.get('title')})")
    return doc


def merge_service(base, local, key: str | None = None):
    """`local` laid over `base`, as compose merges a service over the one it extends."""
    if isinstance(base, dict) and isinstance(local, dict):
        return {**base, **{k: merge_service(base[k], v, k) if k in base else v for k, v in local.items()}}
    if isinstance(base, list) and isinstance(local, list) and key not in REPLACED_ON_MERGE:
        return base + [v for v in local if v not in base]
    return local


def resolve_extends(services: dict, path: Path, schema: dict, r: Report, loaded: dict, seen: tuple = ()) -> dict:
    """`services` (of the compose file at `path`) with each `extends` replaced
    by the merged service, as compose resolves it. Every other file named is
    loaded, and checked against the schema, once (`loaded` caches them)."""
    out = {}
    for name, svc in services.items():
        ext = svc.get("extends")
        if not ext:
            out[name] = svc
            continue
        ext = {"service": ext} if isinstance(ext, str) else ext
        src = (path.parent / ext["file"]).resolve() if ext.get("file") else path.resolve()
        if not r.check((src, ext["service"]) not in seen, f"{name}: extends cycle through {src.name}"):
            continue
        if src == path.resolve():
            pool = services
        elif r.check(src.is_file(), f"{name} extends a service of {ext['file']}, which does not exist"):
            if src not in loaded:
                loaded[src] = load_compose(src, schema, r).get("services") or {}
            pool = loaded[src]
        else:
            continue
        if not r.check(ext["service"] in pool, f"{name} extends {ext['service']}, which {src.name} does not define"):
            continue
        base = resolve_extends({ext["service"]: pool[ext["service"]]}, src, schema, r, loaded,
                               (*seen, (path.resolve(), name))).get(ext["service"], {})
        # Relative bind mounts of the extended file are relative to that file.
        rel = os.path.relpath(src.parent, path.resolve().parent)
        if base.get("volumes") and rel != ".":
            base = {**base, "volumes": [f"{rel}/{v}" if isinstance(v, str) and v.startswith(".") else v
                                        for v in base["volumes"]]}
        out[name] = merge_service(base, {k: v for k, v in svc.items() if k != "extends"})
    return out


def check_compose(args) -> int:
    r = Report("compose")
    compose_path = Path(args.file)
    schema = json.loads(Path(args.schema).read_text())
    doc = load_compose(compose_path, schema, r)
    declared = doc.get("services") or {}
    services = resolve_extends(declared, compose_path, schema, r, {})
    declared_volumes = set((doc.get("volumes") or {}).keys())
    for name in ("redis", "jaeger", "seed", *APP_SERVICES, "locust", "locust-worker", "prometheus", "grafana"):
        r.check(name in services, f"service {name} is missing")
    for name, profile in (("locust", "load"), ("locust-worker", "load"), ("prometheus", "observe"), ("grafana", "observe")):
        if name in services:
            r.check(services[name].get("profiles") == [profile], f"{name} should be in profile {profile!r} only")
    for name in ("redis", "jaeger", "seed", *APP_SERVICES):
        if name in services:
            r.check(not services[name].get("profiles"), f"{name} must start without a profile")

    # Every service: depends_on targets, volumes, bind mounts.
    host_ports: dict[str, str] = {}
    for name, svc in services.items():
        for dep, cond in depends(svc).items():
            if not r.check(dep in services, f"{name} depends on unknown service {dep}"):
                continue
            if cond == "service_healthy":
                r.check("healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
            if cond == "service_completed_successfully":
                r.check(services[dep].get("restart", "no") == "no", f"{name} waits for {dep} to complete, but {dep} restarts")
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith((".", "/")):
                r.check((compose_path.parent / source).exists(), f"{name}: bind-mount source {source} does not exist")
            elif source:
                r.check(source in declared_volumes, f"{name}: volume {source} is not declared under volumes:")
        for port in svc.get("ports") or []:
            published = str(port).rsplit(":", 1)[0] if isinstance(port, str) else str(port.get("published"))
            r.check(published not in host_ports, f"host port {published} published by both {host_ports.get(published)} and {name}")
            host_ports[published] = name

    # The app services.
    for name, addr_var in APP_SERVICES.items():
        svc = services.get(name)
        if not svc:
            continue
        env = env_map(svc)
        port = port_of(env.get(addr_var, ""))
        r.check(env.get(addr_var, "").startswith("0.0.0.0:"), f"{name}: {addr_var} must listen on 0.0.0.0 in a container")
        r.check(env.get("REDIS_URL") == "redis://redis:6379", f"{name}: REDIS_URL should be redis://redis:6379")
        r.check(str(env.get("DATABASE_URL", "")).startswith("postgres://") and "@postgres:5432/" in str(env.get("DATABASE_URL")),
                f"{name}: DATABASE_URL should name the postgres service (postgres://…@postgres:5432/…), is {env.get('DATABASE_URL')!r}")
        r.check(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://jaeger:4317", f"{name}: OTLP should point at http://jaeger:4317")
        r.check(not any(str(v).startswith("catalog:") for v in svc.get("volumes") or []),
                f"{name}: the catalog is the postgres service, not a volume")
        r.check(svc.get("restart") in ("unless-stopped", "always", "on-failure"), f"{name}: needs a restart policy")
        test = " ".join(map(str, (svc.get("healthcheck") or {}).get("test") or []))
        r.check(f":{port}/health" in test, f"{name}: healthcheck should GET /health on port {port}, is {test!r}")
        deps = depends(svc)
        r.check(deps.get("redis") == "service_healthy", f"{name}: should wait for a healthy redis")
        r.check(deps.get("seed") == "service_completed_successfully", f"{name}: should wait for the seed to complete")
        r.check(deps.get("postgres") == "service_healthy", f"{name}: should wait for a healthy postgres")
    if "worker" in services:
        r.check(not services["worker"].get("ports"), "worker must publish no host port (so --scale worker=N works)")
        grace = seconds(services["worker"].get("stop_grace_period", "10s"))
        drain = env_map(services["worker"]).get("WORKER_SHUTDOWN_TIMEOUT_SECS", "30")
        r.check(grace is not None and drain.isdigit() and grace > int(drain),
                f"worker: stop_grace_period ({services['worker'].get('stop_grace_period', '10s')}) must be longer "
                f"than WORKER_SHUTDOWN_TIMEOUT_SECS ({drain}), or Docker kills a draining worker")
        r.check("container_name" not in services["worker"], "worker must have no container_name (so --scale works)")
    if "seed" in services:
        cmd = services["seed"].get("command") or []
        r.check("seed" in cmd and "--if-empty" in cmd, "seed should run `api seed ... --if-empty`")
        seed_url = str(env_map(services["seed"]).get("DATABASE_URL", ""))
        r.check(seed_url.startswith("postgres://") and "@postgres:5432/" in seed_url, "seed must write into the postgres catalog")
        r.check(depends(services["seed"]).get("postgres") == "service_healthy", "seed should wait for a healthy postgres")
    if "postgres" in services:
        pg = services["postgres"]
        r.check(str(pg.get("image", "")).startswith("postgres:16"), f"postgres should run the official postgres:16 image, runs {pg.get('image')!r}")
        r.check(any(str(v).startswith("pgdata:/var/lib/postgresql/data") for v in pg.get("volumes") or []),
                "postgres should keep its data in the named volume pgdata")
        r.check("pg_isready" in " ".join(map(str, (pg.get("healthcheck") or {}).get("test") or [])), "postgres healthcheck should use pg_isready")
        r.check(not pg.get("ports"), "postgres should publish no host port")
    else:
        r.check(False, "there is no postgres service for the shared catalog")
    if "redis" in services:
        cmd = " ".join(services["redis"].get("command") or [])
        r.check("--appendonly yes" in cmd, "redis should run with --appendonly yes")
        r.check("redis-cli" in " ".join((services["redis"].get("healthcheck") or {}).get("test") or []), "redis healthcheck should use redis-cli ping")
    if "jaeger" in services:
        # Issues 6 and 7: jaeger/ holds the service definition compose uses.
        ext = declared["jaeger"].get("extends")
        r.check(isinstance(ext, dict) and ext.get("service") == "jaeger"
                and Path(ext.get("file", "")).parts[:1] == ("jaeger",),
                "jaeger should extend the service jaeger of a file in jaeger/ (jaeger/compose.yml)")
        r.check(str(services["jaeger"].get("image", "")).startswith("jaegertracing/all-in-one:"),
                f"jaeger should run jaegertracing/all-in-one, runs {services['jaeger'].get('image')!r}")
        ports = " ".join(map(str, services["jaeger"].get("ports") or []))
        for p in ("4317", "4318", "16686"):
            r.check(f":{p}" in ports, f"jaeger should publish {p}")

    # Prometheus scrapes the ports the services listen on.
    prom = load_yaml(Path(args.prometheus_config))
    jobs = {j["job_name"]: j for j in prom.get("scrape_configs", [])}
    for name, addr_var in APP_SERVICES.items():
        port = port_of(env_map(services.get(name, {})).get(addr_var, ""))
        job = jobs.get(name)
        if not r.check(job is not None, f"prometheus has no scrape job {name}"):
            continue
        static = [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
        dns = [(n, sd.get("port")) for sd in job.get("dns_sd_configs", []) for n in sd.get("names", [])]
        r.check(f"{name}:{port}" in static or (name, port) in dns, f"prometheus job {name} should scrape {name}:{port}, has {static or dns}")
    for name in APP_SERVICES:
        if name in jobs:
            r.check(bool(jobs[name].get("dns_sd_configs")) and not jobs[name].get("static_configs"),
                    f"prometheus should discover every {name} replica by DNS (dns_sd_configs), not a static target")

    # Grafana: the provisioned dashboards folder is the one mounted.
    provider = load_yaml(ROOT / "deploy/grafana/provisioning/dashboards/dashboards.yml")
    path = provider["providers"][0]["options"]["path"]
    mounts = [v.split(":")[1] for v in services.get("grafana", {}).get("volumes", []) if isinstance(v, str)]
    r.check(path in mounts, f"grafana dashboards provider reads {path}, which is not mounted ({mounts})")

    print(f"compose: {len(services)} services, {r.errors} error(s)")
    return 1 if r.errors else 0


# --- dashboard ----------------------------------------------------------------------------------------


def dashboard_targets(dash: dict):
    """(panel title, target) of every target of every panel, rows included."""
    for panel in dash.get("panels", []):
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []) or []:
                yield p.get("title", "?"), t


def dashboard_exprs(dash: dict):
    """(panel title, refId, expr) of every target of every panel, rows included."""
    for title, t in dashboard_targets(dash):
        yield title, t.get("refId", "?"), t.get("expr", "")


def legend_labels(target: dict) -> set[str]:
    """Labels a target's legendFormat shows ({{name}})."""
    return set(re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", target.get("legendFormat") or ""))


def check_dashboard(args) -> int:
    r = Report("dashboard")
    dash = json.loads(Path(args.file).read_text())
    sources = load_yaml(Path(args.datasources))
    uids = {d.get("uid") for d in sources.get("datasources", []) if d.get("type") == "prometheus"}
    r.check(bool(uids), "no prometheus datasource with a uid is provisioned")
    for key in ("uid", "title", "panels", "schemaVersion"):
        r.check(key in dash, f"missing top-level {key}")

    ids, cells, used = set(), {}, set()
    panels = [p for top in dash.get("panels", []) for p in [top, *top.get("panels", [])]]
    for p in panels:
        title = p.get("title", "?")
        r.check(p.get("id") not in ids, f"duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        g = p.get("gridPos") or {}
        if r.check(all(k in g for k in "hwxy"), f"{title}: gridPos needs h, w, x, y"):
            r.check(0 <= g["x"] and g["x"] + g["w"] <= 24, f"{title}: gridPos runs past 24 columns")
            for dx in range(g["w"]):
                for dy in range(g["h"]):
                    cell = (g["x"] + dx, g["y"] + dy)
                    r.check(cell not in cells, f"{title} overlaps {cells.get(cell)}")
                    cells[cell] = title
        if p.get("type") == "row":
            continue
        ds = p.get("datasource") or {}
        r.check(ds.get("uid") in uids, f"{title}: datasource {ds} is not a provisioned prometheus uid {sorted(uids)}")
        targets = p.get("targets") or []
        if not r.check(bool(targets), f"{title}: no targets"):
            continue
        refs = [t.get("refId") for t in targets]
        r.check(len(refs) == len(set(refs)) and all(refs), f"{title}: refIds must be present and unique, are {refs}")
        for t in targets:
            expr = (t.get("expr") or "").strip()
            if not r.check(bool(expr), f"{title}/{t.get('refId')}: empty expr"):
                continue
            tds = t.get("datasource") or ds
            r.check(tds.get("uid") in uids, f"{title}/{t.get('refId')}: datasource {tds} is not provisioned")
            names = series_in(expr)
            for name in names:
                used.add(name)
                r.check(base_metric(name) is not None, f"{title}/{t.get('refId')}: unknown metric {name!r} in {expr!r}")
            # On the services' series, `job` is the scrape job (api, worker,
            # listener), never the job type: that label is job_type.
            r.check(not (names - {"up"}) or "job" not in labels_named(expr) | legend_labels(t),
                    f"{title}/{t.get('refId')}: groups or labels by job, the scrape job; the job type is job_type: {expr!r}")

    for what, series in REQUIRED_SERIES.items():
        r.check(series in used, f"no panel shows {what} ({series})")
    for q in ("0.5", "0.95", "0.99"):
        r.check(
            any(f"histogram_quantile({q}" in e and "http_request_duration_seconds_bucket" in e for _, _, e in dashboard_exprs(dash)),
            f"no panel shows the request latency p{q[2:]}",
        )

    for where in target_labels_in_sources():
        r.error(f"{where}: a metric label named like one Prometheus sets on every target "
                f"(it would be renamed exported_<name>); use another name, e.g. job_type")

    exported = exported_by_sources()
    for name in sorted({base_metric(n) for n in used} - {None, "up"}):
        if name in exported:
            continue
        if name in PENDING_METRICS:
            r.warn(f"{name} is not in the Rust sources yet (pending: the market-event path)")
        else:
            r.error(f"{name} is not exported by the Rust sources ({', '.join(SOURCE_DIRS)})")

    if args.rules_out:
        # One recording rule per expression, for `promtool check rules` to parse.
        rules = []
        for i, (title, ref, expr) in enumerate(dashboard_exprs(dash)):
            rules.append({"record": f"dashboard:expr_{i}", "expr": grafana_vars(expr, "1m"),
                          "labels": {"panel": title, "ref": ref}})
        Path(args.rules_out).write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))

    n = sum(1 for p in panels if p.get("type") != "row")
    print(f"dashboard: {n} panels, {len(list(dashboard_exprs(dash)))} expressions, {r.errors} error(s)")
    return 1 if r.errors else 0


def grafana_vars(expr: str, rng: str) -> str:
    return expr.replace("$__rate_interval", rng).replace("$__interval", rng).replace("$__range", rng)


def query_dashboard(args) -> int:
    r = Report("query")
    dash = json.loads(Path(args.file).read_text())
    for title, target in dashboard_targets(dash):
        ref, expr = target.get("refId", "?"), target.get("expr", "")
        q = grafana_vars(expr, args.range)
        url = f"{args.prometheus.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as e:
            r.error(f"{title}/{ref}: {e.code} {e.read()[:300]!r} for {q}")
            continue
        if body.get("status") != "success":
            r.error(f"{title}/{ref}: {body} for {q}")
            continue
        n = len(body["data"]["result"])
        pending = {base_metric(s) for s in series_in(expr)} & PENDING_METRICS
        # A legend label the series lack shows as an empty string in Grafana:
        # the expression groups by a label the services do not export.
        lacking = sorted({label for s in body["data"]["result"] for label in legend_labels(target)
                          if label not in s["metric"]})
        if lacking:
            r.error(f"{title}/{ref}: legend shows {', '.join(lacking)}, which the series lack, for {q}")
        elif n:
            r.ok(f"{title}/{ref}: {n} series")
        elif pending:
            r.warn(f"{title}/{ref}: no data yet ({', '.join(sorted(pending))} pending)")
        else:
            r.error(f"{title}/{ref}: no data for {q}")
    print(f"query: {r.errors} error(s)")
    return 1 if r.errors else 0


# --- Dockerfile -----------------------------------------------------------------------------------------


def check_dockerfile(args) -> int:
    r = Report("dockerfile")
    text = Path(args.file).read_text()
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.strip().startswith("#")]
    args_default = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", "\n".join(lines), re.M))

    def expand(s: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: args_default.get(m.group(1), m.group(0)), s)

    stages, current = [], None
    for ln in lines:
        instr, _, rest = ln.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            current = {"image": expand(m.group(1)), "name": m.group(2), "lines": []}
            stages.append(current)
        elif current is not None:
            current["lines"].append((instr, rest))
    if not r.check(len(stages) >= 2, "needs a multi-stage build"):
        return 1

    rust = [s for s in stages if s["image"].startswith("rust:")]
    if r.check(bool(rust), "no rust: builder image"):
        m = re.match(r"rust:(\d+)\.(\d+)(?:\.\d+)?-(\w+)", rust[0]["image"])
        ws = re.search(r'rust-version\s*=\s*"(\d+)\.(\d+)', (ROOT / "Cargo.toml").read_text())
        if r.check(bool(m), f"cannot read the Rust version of {rust[0]['image']}") and ws:
            r.check((int(m.group(1)), int(m.group(2))) >= (int(ws.group(1)), int(ws.group(2))),
                    f"{rust[0]['image']} is older than the workspace rust-version {ws.group(1)}.{ws.group(2)}")
            release = m.group(3)
            runtime = stages[-1]["image"]
            r.check(runtime == f"debian:{release}-slim", f"runtime {runtime} should be debian:{release}-slim (the builder's glibc)")

    runs = " ".join(rest for s in stages for instr, rest in s["lines"] if instr == "RUN")
    r.check("cargo chef cook" in runs or re.search(r"cargo (build|fetch)[^&]*Cargo\.toml", runs) is not None or "dummy" in runs,
            "no cached dependency layer (cargo chef cook, or a dummy-source build)")
    builds = re.findall(r"cargo build[^&;]*", runs)
    r.check(any("--locked" in b and "--release" in b for b in builds), "the release build should use --locked")
    for b in ("api", "worker", "listener"):
        r.check(any(f"--bin {b}" in x or "--bins" in x for x in builds), f"the build does not build the {b} binary")
    final = stages[-1]["lines"]
    copies = " ".join(rest for instr, rest in final if instr == "COPY")
    for b in ("api", "worker", "listener"):
        r.check(re.search(rf"\b{b}\b", copies) is not None, f"the runtime stage does not copy the {b} binary")
    apt = " ".join(rest for instr, rest in final if instr == "RUN")
    for pkg in ("ca-certificates", "curl"):
        r.check(pkg in apt, f"the runtime stage should install {pkg}")
    users = [rest.split(":")[0] for instr, rest in final if instr == "USER"]
    r.check(bool(users) and users[-1] not in ("root", "0"), f"the runtime stage must end as a non-root USER (has {users or 'none'})")
    r.check("useradd" in apt or "adduser" in apt, "the runtime stage should create its user")
    r.check("CMD" in {i for i, _ in final} or "ENTRYPOINT" in {i for i, _ in final}, "no default command")

    ignore = {ln.strip().strip("/") for ln in Path(args.dockerignore).read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    for entry in ("target", "data", ".git"):
        r.check(entry in ignore, f".dockerignore should exclude {entry}")
    print(f"dockerfile: {len(stages)} stages, {r.errors} error(s)")
    return 1 if r.errors else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compose")
    p.add_argument("file", nargs="?", default=str(ROOT / "docker-compose.yml"))
    p.add_argument("--schema", default=str(ROOT / "deploy/schema/compose-spec.json"))
    p.add_argument("--prometheus-config", default=str(ROOT / "deploy/prometheus/prometheus.yml"))
    p = sub.add_parser("dashboard")
    p.add_argument("file", nargs="?", default=str(ROOT / "deploy/grafana/dashboards/pricing.json"))
    p.add_argument("--datasources", default=str(ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml"))
    p.add_argument("--rules-out", help="write the expressions as a Prometheus rules file here")
    p = sub.add_parser("query-dashboard")
    p.add_argument("file", nargs="?", default=str(ROOT / "deploy/grafana/dashboards/pricing.json"))
    p.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    p.add_argument("--range", default="15s", help="what $__rate_interval stands for")
    p = sub.add_parser("dockerfile")
    p.add_argument("file", nargs="?", default=str(ROOT / "Dockerfile"))
    p.add_argument("--dockerignore", default=str(ROOT / ".dockerignore"))
    args = parser.parse_args(argv)
    return {"compose": check_compose, "dashboard": check_dashboard,
            "query-dashboard": query_dashboard, "dockerfile": check_dockerfile}[args.command](args)


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main(sys.argv[1:]))
