// The queue dashboard: a small page over the api's JSON endpoints.
//
// Every value is put in the page with textContent or as an attribute set
// by the DOM, never as HTML, so job arguments and errors (which come from
// outside) always show as text. The admin token lives in sessionStorage
// only and goes out in the Authorization header, never in a URL.
"use strict";

const POLL_MS = 2000;
const STATES = ["pending", "scheduled", "running", "retrying", "failed", "succeeded", "skipped", "cancelled"];
const jaegerUi = (document.querySelector('meta[name="jaeger-ui-url"]') || {}).content || "";

let timer = null;
let lastOk = null;
let generation = 0;

// ---- small DOM helpers -----------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function link(href, text, attrs) {
  return el("a", Object.assign({ href }, attrs || {}), text);
}

function jobLink(id) {
  return link("#/job/" + encodeURIComponent(id), id, { class: "mono" });
}

function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function fmtAge(secs) {
  if (secs === null || secs === undefined) return "–";
  if (secs < 1) return "<1 s";
  if (secs < 120) return Math.round(secs) + " s";
  if (secs < 7200) return Math.round(secs / 60) + " min";
  return Math.round(secs / 3600) + " h";
}

function fmtRate(r) {
  return r === null || r === undefined ? "–" : r >= 100 ? Math.round(r).toString() : r.toFixed(1);
}

function fmtPct(r) {
  return r === null || r === undefined ? "–" : (r * 100).toFixed(1) + "%";
}

function table(headers, rows, empty) {
  if (!rows.length) return el("p", { class: "muted" }, empty || "None.");
  return el("table", {},
    // A header written ">Name" heads a column of numbers (right-aligned).
    el("thead", {}, el("tr", {}, headers.map((h) => h.startsWith(">") ? el("th", { class: "num" }, h.slice(1)) : el("th", {}, h)))),
    el("tbody", {}, rows));
}

function pretty(value) {
  return el("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

// ---- the API ---------------------------------------------------------------

class HttpError extends Error {
  constructor(status, body) {
    super((body && body.detail) || "HTTP " + status);
    this.status = status;
    this.body = body;
  }
}

function token() {
  return sessionStorage.getItem("adminToken") || "";
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  opts.headers = Object.assign({ Accept: "application/json" }, opts.headers);
  if (opts.method && opts.method !== "GET" && token()) {
    opts.headers.Authorization = "Bearer " + token();
  }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    unreachable();
    throw e;
  }
  let body = null;
  try {
    body = await resp.json();
  } catch (_) {
    body = null;
  }
  if (resp.status === 503) unreachable();
  else reachable();
  if (!resp.ok) throw new HttpError(resp.status, body);
  return body;
}

function unreachable() {
  const banner = document.getElementById("banner");
  document.getElementById("banner-since").textContent = lastOk ? fmtTime(lastOk.toISOString()) : "before the page loaded (none yet)";
  banner.hidden = false;
  document.body.classList.add("stale");
}

function reachable() {
  lastOk = new Date();
  document.getElementById("banner").hidden = true;
  document.body.classList.remove("stale");
  document.getElementById("updated").textContent = "Updated " + fmtTime(lastOk.toISOString());
}

function flash(text, kind) {
  const f = document.getElementById("flash");
  f.textContent = text;
  f.className = "flash " + (kind || "ok");
  f.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { f.hidden = true; }, 6000);
}

// A mutating call: needs the admin token when the api has one.
async function act(label, method, path) {
  try {
    const body = await api(path, { method });
    flash(label + ": done" + (body && body.task_id ? " (task " + body.task_id + ")" : ""), "ok");
  } catch (e) {
    if (e.status === 401) flash(label + ": this needs the admin token (enter it at the top)", "error");
    else if (e.status === 403) flash(label + ": " + e.message, "error");
    else flash(label + ": " + e.message, "error");
  }
  refresh();
}

// ---- views -----------------------------------------------------------------

function queueRow(q) {
  const d = q.depths;
  const t = q.throughput;
  const count = (state, n) => link("#/jobs?queue=" + encodeURIComponent(q.name) + "&state=" + state, n.toLocaleString("en"), { "data-depth": state });
  return el("tr", { "data-queue": q.name },
    el("td", {}, el("strong", {}, q.name), d.paused ? el("span", { class: "badge paused" }, "paused") : null),
    el("td", { class: "num" }, count("pending", d.pending)),
    el("td", { class: "num" }, count("scheduled", d.delayed)),
    el("td", { class: "num" }, count("running", d.running)),
    el("td", { class: "num" }, count("failed", d.dead)),
    el("td", { class: "num" }, fmtRate(t.started_per_sec)),
    el("td", { class: "num" }, fmtRate(t.finished_per_sec)),
    el("td", { class: "num" }, fmtPct(t.failure_rate)),
    el("td", { class: "num" }, fmtAge(t.oldest_pending_secs)),
    el("td", { class: "num muted" }, d.succeeded_total.toLocaleString("en") + " / " + d.failed_total.toLocaleString("en")),
    el("td", {}, d.paused
      ? el("button", { onclick: () => act("Resume " + q.name, "POST", "/api/v1/queues/" + encodeURIComponent(q.name) + "/resume") }, "Resume")
      : el("button", { onclick: () => act("Pause " + q.name, "POST", "/api/v1/queues/" + encodeURIComponent(q.name) + "/pause") }, "Pause")));
}

async function overview() {
  const o = await api("/api/v1/dashboard/overview");
  const window = o.queues.map((q) => q.throughput.window_secs).find((w) => w) || null;
  const ev = o.events;
  return [
    el("section", {},
      el("h2", {}, "Queues"),
      el("p", { class: "muted" }, window ? "Rates over the last " + Math.round(window) + " s." : "Rates appear after the next update."),
      table(["Queue", ">Pending", ">Scheduled / retrying", ">Running", ">Dead", ">Started/s", ">Finished/s", ">Failure rate", ">Oldest pending", ">Succeeded / failed (all time)", ""],
        o.queues.map(queueRow)),
      el("p", {}, el("button", { id: "recalculate-all", onclick: () => act("Recalculate all prices", "POST", "/api/v1/tasks/recalculate-all") }, "Recalculate all prices"))),
    el("section", {},
      el("h2", {}, "Workers"),
      el("p", { id: "workers-summary" },
        el("strong", {}, String(o.workers.live)), " live, ",
        el("strong", {}, o.workers.busy + " / " + o.workers.slots), " slots busy. ",
        link("#/workers", "Details"))),
    el("section", {},
      el("h2", {}, "Market events"),
      el("p", {}, "Stream ", el("code", {}, ev.stream), " holds ", String(ev.length), " entries."),
      table(["Consumer group", ">Consumers", ">Pending (unacked)", ">Lag"],
        ev.groups.map((g) => el("tr", {}, el("td", {}, g.name), el("td", { class: "num" }, g.consumers), el("td", { class: "num" }, g.pending), el("td", { class: "num" }, g.lag === null ? "?" : g.lag))),
        "No consumer group yet (no listener has run)."),
      table(["Appended", "Kind", "Products", "Event id"],
        ev.recent.map((e) => el("tr", {},
          el("td", {}, fmtTime(e.appended_at)),
          el("td", {}, e.kind || el("span", { class: "error-text" }, e.error || "unreadable")),
          el("td", {}, e.products > e.product_ids.length ? e.product_ids.join(", ") + " … (" + e.products + ")" : e.product_ids.join(", ")),
          el("td", { class: "mono" }, e.event_id || e.entry_id))),
        "No events yet.")),
  ];
}

function params() {
  const q = location.hash.split("?")[1] || "";
  return new URLSearchParams(q);
}

function jobRow(j) {
  return el("tr", { "data-task": j.task_id },
    el("td", {}, jobLink(j.task_id)),
    el("td", {}, j.name),
    el("td", {}, el("span", { class: "badge " + j.status }, j.status)),
    el("td", { class: "num" }, j.attempts + " / " + j.max_attempts),
    el("td", {}, fmtTime(j.enqueued_at)),
    el("td", {}, fmtTime(j.run_at || j.started_at)),
    el("td", {}, fmtTime(j.finished_at)),
    el("td", { class: "mono" }, j.worker || ""),
    el("td", { class: "error-text clip" }, j.error || ""));
}

let queueNames = [];

async function jobs() {
  const p = params();
  if (!queueNames.length) {
    const qs = await api("/api/v1/queues");
    queueNames = Object.keys(qs.queues);
  }
  const queue = p.get("queue") || queueNames[0] || "default";
  const state = p.get("state") || "pending";
  const cursor = p.get("cursor") || "0";
  const back = (p.get("back") || "").split(",").filter(Boolean);
  const list = await api("/api/v1/queues/" + encodeURIComponent(queue) + "/jobs?state=" + encodeURIComponent(state) + "&cursor=" + encodeURIComponent(cursor) + "&limit=50");
  const href = (q, s, c, b) => "#/jobs?queue=" + encodeURIComponent(q) + "&state=" + s + (c ? "&cursor=" + c : "") + (b && b.length ? "&back=" + b.join(",") : "");
  const nav = el("p", { class: "pager" },
    back.length ? link(href(queue, state, back[back.length - 1] === "0" ? null : back[back.length - 1], back.slice(0, -1)), "← Previous page") : null,
    " ",
    cursor !== "0" ? link(href(queue, state, null, []), "First page") : null,
    " ",
    list.next_cursor !== null ? link(href(queue, state, list.next_cursor, back.concat([cursor])), "Next page →", { id: "next-page" }) : el("span", { class: "muted" }, "End of list."));
  return [
    el("section", {},
      el("h2", {}, "Jobs"),
      el("p", { class: "tabs" }, "Queue: ", queueNames.map((n) => link(href(n, state), n, { class: n === queue ? "current" : "" }))),
      el("p", { class: "tabs" }, "State: ", STATES.map((s) => link(href(queue, s), s, { class: s === state ? "current" : "", "data-state": s }))),
      el("p", { class: "muted" }, "Sorted by time: pending next to run first, scheduled and retrying soonest due first, the others newest first. The set holds " + list.set_size.toLocaleString("en") + " entries."),
      table(["Task", "Type", "State", ">Attempts", "Enqueued", "Due / started", "Finished", "Worker", "Last error"],
        list.jobs.map(jobRow), list.next_cursor !== null ? "None on this page; there may be more on the next." : "No " + state + " jobs."),
      nav),
  ];
}

function dl(pairs) {
  return el("dl", {}, pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v === null || v === "" ? el("span", { class: "muted" }, "–") : v)]));
}

async function detail(id) {
  let j;
  try {
    j = await api("/api/v1/tasks/" + encodeURIComponent(id));
  } catch (e) {
    if (e.status === 404 || e.status === 422) {
      return [el("section", {}, el("h2", {}, "Task not found"), el("p", {}, "No task ", el("code", {}, id), ": " + e.message))];
    }
    throw e;
  }
  const q = encodeURIComponent(j.task_id);
  const actions = [];
  if (j.status === "failed") actions.push(el("button", { id: "retry", onclick: () => act("Retry " + j.task_id, "POST", "/api/v1/tasks/" + q + "/retry") }, "Retry"));
  if (["pending", "scheduled", "retrying"].includes(j.status)) actions.push(el("button", { id: "cancel", onclick: () => act("Cancel " + j.task_id, "DELETE", "/api/v1/tasks/" + q) }, "Cancel"));
  if (j.status === "running") actions.push(el("button", { id: "revoke", onclick: () => act("Revoke " + j.task_id, "DELETE", "/api/v1/tasks/" + q) }, "Revoke"));
  const trace = j.trace_id
    ? (jaegerUi ? link(jaegerUi + "/trace/" + encodeURIComponent(j.trace_id), j.trace_id, { class: "mono", id: "trace-link", rel: "noopener noreferrer", target: "_blank" }) : el("span", { class: "mono" }, j.trace_id))
    : null;
  return [
    el("section", { id: "job", "data-status": j.status },
      el("h2", {}, "Task ", el("span", { class: "mono" }, j.task_id), " ", el("span", { class: "badge " + j.status, id: "job-status" }, j.status)),
      el("p", {}, actions),
      dl([
        ["Type", j.name],
        ["Queue", link("#/jobs?queue=" + encodeURIComponent(j.queue) + "&state=" + j.status, j.queue)],
        ["Attempts", j.attempts + " of " + j.max_attempts + (j.leases_lost ? " (worker lost " + j.leases_lost + "×)" : "")],
        ["Enqueued", fmtTime(j.enqueued_at)],
        ["Due", fmtTime(j.run_at)],
        ["Started", fmtTime(j.started_at)],
        ["Finished", fmtTime(j.finished_at)],
        ["Worker", j.worker ? el("span", { class: "mono" }, j.worker) : null],
        ["Schedule", j.schedule],
        ["Trace", trace],
      ]),
      el("h3", {}, "Arguments"),
      j.args === undefined || j.args === null ? el("p", { class: "muted" }, "Not kept (dropped when a job succeeds, is skipped or cancelled).") : pretty(j.args),
      el("h3", {}, "Last error"),
      j.error ? el("pre", { class: "error-text", id: "job-error" }, j.error) : el("p", { class: "muted" }, "None."),
      el("h3", {}, "Result"),
      j.result === null || j.result === undefined ? el("p", { class: "muted" }, "None.") : pretty(j.result)),
  ];
}

async function workers() {
  const [w, s] = await Promise.all([api("/api/v1/workers"), api("/api/v1/schedules")]);
  return [
    el("section", {},
      el("h2", {}, "Workers"),
      table(["Worker", "Host", ">Pid", "Version", "Queues", ">Busy / slots", "Started", "Last heartbeat", "Running now"],
        w.workers.map((x) => el("tr", { "data-worker": x.id },
          el("td", { class: "mono" }, x.id), el("td", {}, x.host), el("td", { class: "num" }, x.pid), el("td", {}, x.version),
          el("td", {}, x.queues.join(", ")), el("td", { class: "num" }, x.busy + " / " + x.concurrency),
          el("td", {}, fmtTime(x.started_at)), el("td", {}, fmtTime(x.last_heartbeat)),
          el("td", {}, x.jobs.map((h) => el("div", {}, jobLink(h.id), " " + h.type))))),
        "No live worker.")),
    el("section", {},
      el("h2", {}, "Schedules"),
      table(["Schedule", "Job", "Queue", "When", "Last tick", "Last task", "Next run", ">Workers"],
        s.schedules.map((x) => el("tr", {},
          el("td", {}, x.name), el("td", {}, x.job), el("td", {}, x.queue), el("td", { class: "mono" }, x.expression),
          el("td", {}, x.last_run ? fmtTime(x.last_run.tick) : ""), el("td", {}, x.last_run ? jobLink(x.last_run.task_id) : ""),
          el("td", {}, fmtTime(x.next_run)), el("td", { class: "num" }, x.workers))),
        "No schedule (set SCHEDULE_<NAME> on a worker).")),
  ];
}

// ---- routing and polling ---------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const path = hash.split("?")[0];
  if (path.startsWith("/job/")) return ["jobs", () => detail(decodeURIComponent(path.slice(5)))];
  if (path === "/jobs") return ["jobs", jobs];
  if (path === "/workers") return ["workers", workers];
  return ["overview", overview];
}

async function refresh() {
  const mine = ++generation;
  const [name, view] = route();
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("current", a.dataset.view === name);
  try {
    const nodes = await view();
    if (mine !== generation) return; // a newer view or refresh took over
    document.getElementById("view").replaceChildren(...nodes);
    document.body.dataset.loaded = name;
  } catch (e) {
    if (mine !== generation) return;
    // Keep the last good page: the banner says it is stale.
    if (!(e instanceof HttpError) || e.status === 503) return;
    document.getElementById("view").replaceChildren(el("p", { class: "error-text" }, "Error: " + e.message));
  }
}

function schedule() {
  clearInterval(timer);
  timer = setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
}

function showToken() {
  const has = !!token();
  document.getElementById("token-forget").hidden = !has;
  document.getElementById("token-state").textContent = has ? "token set for this tab" : "";
  document.getElementById("token-value").value = "";
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = document.getElementById("token-value").value.trim();
    if (v) sessionStorage.setItem("adminToken", v);
    showToken();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem("adminToken");
    showToken();
  });
  document.getElementById("search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = document.getElementById("search-id").value.trim();
    if (v) location.hash = "#/job/" + encodeURIComponent(v);
  });
  window.addEventListener("hashchange", refresh);
  showToken();
  refresh();
  schedule();
});
