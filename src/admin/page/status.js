// Ballast's live status page: polls the admin API, updates the tables in place (rows keyed by
// listener name and by group and target address, so focus and clicks survive a refresh),
// draws rates from counter deltas, and sends drain / enable / disable after a confirmation.
// Text only through textContent: nothing the API returns is parsed as HTML.
"use strict";

const POLL_MS = 2000;
const HISTORY = 150; // samples kept per series: 5 minutes at POLL_MS
const SVG = "http://www.w3.org/2000/svg"; // the SVG namespace, not a resource

const series = new Map(); // key -> { last: {t, counters...}, points: {name: [rates]} }
let timer = null;
let refreshes = 0;
let readOnly = false; // admin.read_only: this page can look, not change
let fleetNode = null; // this node's id in a fleet (cluster:), whose changes reach every node

const $ = (id) => document.getElementById(id);

// The admin API's URL for `path`, from the origin alone: a page opened as
// user:token@host has credentials in its base URL, which fetch() refuses.
const api = (path) => location.origin + path;

async function getJson(path) {
  const response = await fetch(api(path), { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function schedule(delay) {
  clearTimeout(timer);
  timer = setTimeout(refresh, delay);
}

async function refresh() {
  try {
    const [node, listeners, targets] = await Promise.all([
      getJson("/node"),
      getJson("/listeners"),
      getJson("/targets"),
    ]);
    // Only a node of a fleet has /fleet (elsewhere it is a 404, a console error).
    fleetNode = node.fleet ?? null;
    const fleet = fleetNode ? await getJson("/fleet") : null;
    const now = Date.now();
    renderNode(node);
    renderFleet(fleet);
    renderListeners(listeners.listeners, now);
    renderGroups(targets.target_groups, now);
    prune(now);
    refreshes += 1;
    const updated = $("updated");
    updated.dataset.refreshes = String(refreshes);
    updated.textContent = `Updated ${new Date(now).toLocaleTimeString()}`;
    updated.classList.remove("stale");
  } catch (e) {
    const updated = $("updated");
    updated.textContent = `Cannot reach the admin API (${e.message}); retrying.`;
    updated.classList.add("stale");
  } finally {
    schedule(POLL_MS);
  }
}

// --- formatting -----------------------------------------------------------------------------

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

// A whole count with thousands separators (12,345).
function count(n) {
  return Number(n).toLocaleString("en-US");
}

// A duration in seconds in one or two units: 42 s, 5 min, 3 h 12 min, 2 d 4 h.
function duration(s) {
  s = Math.max(0, Math.round(s));
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}

function rate(n, unit) {
  if (unit === "B/s") return `${bytes(n)}/s`;
  return `${n < 10 ? n.toFixed(1) : Math.round(n)}${unit}`;
}

function ago(unixMs, now) {
  if (!unixMs) return "never";
  return `${duration((now - unixMs) / 1000)} ago`;
}

// --- rates and sparklines -------------------------------------------------------------------

// Records `counters` (name -> running total) for `key` at `now`; returns name -> the rates
// seen so far (per second), newest last. A counter that went down (a reload reset it) gives 0.
function sample(key, now, counters) {
  let s = series.get(key);
  if (!s) {
    s = { last: null, points: {} };
    series.set(key, s);
  }
  for (const name of Object.keys(counters)) s.points[name] ??= [];
  if (s.last && now > s.last.t) {
    const dt = (now - s.last.t) / 1000;
    for (const [name, value] of Object.entries(counters)) {
      const points = s.points[name];
      points.push(Math.max(0, value - (s.last[name] ?? value)) / dt);
      if (points.length > HISTORY) points.shift();
    }
  }
  s.last = { t: now, ...counters };
  s.seen = now;
  return s.points;
}

// Forgets series not sampled in this refresh (targets and listeners gone).
function prune(now) {
  for (const [key, s] of series) if (s.seen !== now) series.delete(key);
}

function sparkline(cell, points, unit, what) {
  const width = 72;
  const height = 28;
  let svg = cell.querySelector("svg");
  if (!svg) {
    svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("role", "img");
    // The area under the line, then the line: a rate reads at a glance, not only its shape.
    const area = document.createElementNS(SVG, "polygon");
    area.setAttribute("class", "area");
    svg.append(area, document.createElementNS(SVG, "polyline"));
    const label = document.createElement("span");
    label.className = "rate";
    cell.append(svg, label);
  }
  // Newest at the right edge; the x scale spans at least a minute, then stretches so the
  // whole history (up to HISTORY samples) fills the width.
  const max = Math.max(...points, 0);
  const step = width / (Math.max(points.length, 60000 / POLL_MS) - 1);
  const start = width - (points.length - 1) * step;
  const coords = points.map((v, i) => {
    const y = max > 0 ? height - 1 - (v / max) * (height - 2) : height - 1;
    return `${(start + i * step).toFixed(1)},${y.toFixed(1)}`;
  });
  svg.querySelector("polyline").setAttribute("points", coords.join(" "));
  const floor = coords.length
    ? `${coords.join(" ")} ${(start + (points.length - 1) * step).toFixed(1)},${height} ${start.toFixed(1)},${height}`
    : "";
  svg.querySelector("polygon").setAttribute("points", floor);
  const now = points.length ? points[points.length - 1] : 0;
  const text = points.length ? `${rate(now, unit)} · peak ${rate(max, unit)}` : "–";
  svg.setAttribute("aria-label", points.length
    ? `${what}: now ${rate(now, unit)}, peak ${rate(max, unit)} over the last ${Math.ceil(points.length * POLL_MS / 60000)} min`
    : `${what}: no rate yet`);
  cell.querySelector(".rate").textContent = text;
}

// --- tables ---------------------------------------------------------------------------------

// The row of `tbody` keyed `key`, made with `columns` cells when missing.
function row(tbody, key, columns) {
  let tr = [...tbody.rows].find((r) => r.dataset.key === key);
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.key = key;
    for (let i = 0; i < columns; i += 1) tr.append(document.createElement(i === 0 ? "th" : "td"));
    tr.cells[0].scope = "row";
    tbody.append(tr);
  }
  return tr;
}

function dropRows(tbody, keep) {
  for (const tr of [...tbody.rows]) if (!keep.has(tr.dataset.key)) tr.remove();
}

function setText(cell, text, className) {
  if (cell.textContent !== text) cell.textContent = text;
  if (className !== undefined) cell.className = className;
}

// The fleet this node is part of: etcd's state, the leaders, and every node's record.
function renderFleet(fleet) {
  $("fleet-section").hidden = !fleet;
  if (!fleet) return;
  const leaders = Object.entries(fleet.leaders ?? {}).map(([g, n]) => `${g} → ${n}`);
  setText($("fleet-summary"), `${fleet.prefix}: etcd `
    + (fleet.etcd_connected ? "connected" : `not reached (${fleet.last_error ?? "no answer yet"})`)
    + ` · revision ${fleet.latest_revision}`
    + (leaders.length ? ` · leaders: ${leaders.join(", ")}` : "")
    + (fleet.vanished.length
      ? ` · gone without leaving: ${fleet.vanished.map((v) => v.id).join(", ")}` : ""),
    fleet.etcd_connected ? "" : "warn");
  const tbody = $("fleet").tBodies[0];
  const keep = new Set();
  for (const n of fleet.nodes) {
    keep.add(n.id);
    const tr = row(tbody, n.id, 6);
    setText(tr.cells[0], n.this_node ? `${n.id} (this node)` : n.id);
    setText(tr.cells[1], n.version);
    setText(tr.cells[2], count(n.generation), "number");
    setText(tr.cells[3], n.ready ? "ready" : "not ready");
    setText(tr.cells[4], count(n.revision), "number");
    setText(tr.cells[5], n.up_to_date ? "in step" : "not in step", n.up_to_date ? "" : "warn");
  }
  dropRows(tbody, keep);
}

function renderNode(node) {
  const reasons = node.ready ? "ready" : `not ready: ${node.reasons.join("; ")}`;
  const el = $("node");
  el.replaceChildren();
  // The pill says what /healthz says: green only when the node is serving and ready.
  const badge = document.createElement("span");
  const notReady = node.service === "serving" && !node.ready;
  badge.className = notReady ? "badge not-ready" : `badge ${node.service}`;
  badge.textContent = notReady ? "serving, not ready" : node.service;
  el.append(badge, ` ${reasons}`);
  const about = $("process");
  setText(about, `version ${node.version} · generation ${node.generation} · PID ${node.pid} · `
    + `up ${duration(node.uptime_s)} · ${node.workers} worker${node.workers === 1 ? "" : "s"}`);
  // Drain the node, or serve again after a drain.
  const button = $("node-action");
  const action = node.service === "serving" ? "drain" : "enable";
  button.dataset.action = action;
  button.textContent = action === "drain" ? "Drain node" : "Enable node";
  readOnly = Boolean(node.read_only);
  button.disabled = node.service === "stopping" || readOnly;
  button.title = readOnly ? "read-only over TCP (admin.read_only): use the CLI on the host" : "";
}

function renderListeners(listeners, now) {
  const tbody = $("listeners").tBodies[0];
  const keep = new Set();
  for (const l of listeners) {
    keep.add(l.name);
    const tr = row(tbody, l.name, 8);
    const routes = l.routes.map((r) => `${r.server_name} → ${r.target_group}`);
    const group = routes.length ? `${l.target_group} (default); ${routes.join(", ")}` : l.target_group;
    const cap = l.max_connections ? ` / ${count(l.max_connections)}` : "";
    const why = Object.entries(l.refused_by_reason ?? {})
      .filter(([, n]) => n > 0)
      .map(([reason, n]) => `${reason.replaceAll("_", " ")} ${count(n)}`);
    const refused = why.length ? `${count(l.refused)} (${why.join(", ")})` : count(l.refused);
    const cells = [l.name, l.protocol, l.bind, group, `${count(l.active)}${cap}`, count(l.accepted), refused];
    cells.forEach((text, i) => setText(tr.cells[i], text, i >= 4 ? "number" : ""));
    const points = sample(`listener/${l.name}`, now, { accepted: l.accepted });
    sparkline(tr.cells[7], points.accepted, "/s", `New connections per second on ${l.name}`);
  }
  dropRows(tbody, keep);
}

const TARGET_COLUMNS = [
  "Target", "Health", "State", "Weight", "Active", "Total", "Connections/s",
  "Bytes/s", "Connect failures", "Last check", "Actions",
];

function groupSection(group) {
  const id = `group-${group.name}`;
  let section = [...$("groups").children].find((s) => s.dataset.group === group.name);
  if (section) return section;
  section = document.createElement("section");
  section.dataset.group = group.name;
  section.setAttribute("aria-labelledby", id);
  const h = document.createElement("h3");
  h.id = id;
  const table = document.createElement("table");
  table.className = "targets";
  const head = table.createTHead().insertRow();
  for (const name of TARGET_COLUMNS) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = name;
    head.append(th);
  }
  table.createTBody();
  const scroll = document.createElement("div");
  scroll.className = "scroll";
  scroll.append(table);
  section.append(h, scroll);
  $("groups").append(section);
  return section;
}

// A group's queue: waiting now, the mean wait of those that waited, refusals.
function queueText(q) {
  const waited = q.served + q.refused_timeout;
  const mean = waited > 0 ? ` · mean wait ${count(Math.round(q.waited_ms / waited))} ms` : "";
  return ` · queue ${count(q.waiting)} of ${count(q.max)} waiting${mean}` +
    ` (${count(q.refused_full + q.refused_timeout)} refused)`;
}

function renderGroups(groups, now) {
  const keep = new Set(groups.map((g) => g.name));
  for (const s of [...$("groups").children]) if (!keep.has(s.dataset.group)) s.remove();
  for (const g of groups) {
    const section = groupSection(g);
    const healthy = g.targets.filter((t) => t.health === "healthy").length;
    const queue = g.queue ? queueText(g.queue) : "";
    setText(section.querySelector("h3"),
      `${g.name} · ${g.algorithm} · ${healthy} of ${g.targets.length} healthy${queue}`);
    const tbody = section.querySelector("tbody");
    const rows = new Set();
    for (const t of g.targets) {
      rows.add(t.address);
      renderTarget(row(tbody, t.address, TARGET_COLUMNS.length), g.name, t, now);
    }
    dropRows(tbody, rows);
  }
}

function renderTarget(tr, group, t, now) {
  const c = tr.cells;
  tr.dataset.health = t.health;
  tr.dataset.state = t.admin_state;
  setText(c[0], t.backup ? `${t.address} (backup)` : t.address);
  const health = t.ejected ? `${t.health}, ejected` : t.health;
  // How long in this state: a target down for a minute and one down for a day differ.
  const since = t.last_state_change_unix_ms ? ` · ${ago(t.last_state_change_unix_ms, now).replace(" ago", "")}` : "";
  setText(c[1], `${health}${since}`, `health ${t.health}${t.ejected ? " ejected" : ""}`);
  setText(c[2], t.admin_state, `state ${t.admin_state}`);
  setText(c[3], count(t.weight), "number");
  setText(c[4], count(t.active), "number");
  setText(c[5], count(t.total), "number");
  const points = sample(`target/${group}/${t.address}`, now, {
    total: t.total,
    bytes: t.bytes_to_target + t.bytes_from_target,
  });
  sparkline(c[6], points.total, "/s", `Connections per second to ${t.address}`);
  sparkline(c[7], points.bytes, "B/s", `Bytes per second to and from ${t.address}`);
  c[7].title = `${bytes(t.bytes_to_target)} to the target, ${bytes(t.bytes_from_target)} from it in all`;
  setText(c[8], count(t.connect_failures), t.connect_failures > 0 ? "number warn" : "number");
  setText(c[9], lastCheck(t, now), t.last_check.result === "fail" ? "check warn" : "check");
  actions(c[10], group, t);
}

// The last check, with why the last failed one failed while the target is not healthy.
function lastCheck(t, now) {
  const check = t.last_check;
  if (!check.result) return "no check yet";
  const latency = check.latency_ms == null ? "" : ` · ${check.latency_ms.toFixed(1)} ms`;
  const failure = t.last_failure;
  if (check.result === "fail" && failure) {
    return `fail: ${failure.reason} · ${ago(check.at_unix_ms, now)}`;
  }
  const why = failure && t.health !== "healthy"
    ? ` (failed ${ago(failure.at_unix_ms, now)}: ${failure.reason})` : "";
  return `${check.result}${latency} · ${ago(check.at_unix_ms, now)}${why}`;
}

const ACTIONS = {
  drain: "takes no new connections; its open connections go on.",
  disable: "takes no new connections; what is still open after the group's drain_timeout is closed.",
  enable: "takes new connections again (once healthy).",
};

function actions(cell, group, t) {
  if (!cell.firstChild) {
    for (const action of Object.keys(ACTIONS)) {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.action = action;
      b.textContent = action[0].toUpperCase() + action.slice(1);
      b.setAttribute("aria-label", `${b.textContent} ${t.address} in ${group}`);
      b.addEventListener("click", () => confirmAction(group, t.address, action));
      cell.append(b);
    }
  }
  // Which actions change something in each admin state.
  const useful = {
    active: ["drain", "disable"],
    draining: ["disable", "enable"],
    disabled: ["enable"],
  }[t.admin_state] ?? [];
  for (const b of cell.children) {
    b.disabled = readOnly || !useful.includes(b.dataset.action);
    b.title = readOnly ? "read-only over TCP (admin.read_only): use the CLI on the host" : "";
  }
}

// --- actions --------------------------------------------------------------------------------

let pending = null;

const NODE_ACTIONS = {
  drain: "This node's /healthz fails at once (keepalived or BGP move traffic away); its "
    + "listeners keep accepting for the node_drain_grace, then close. Open connections go on.",
  enable: "This node serves again: its listeners are bound again if they had closed.",
};

function confirmNode() {
  const action = $("node-action").dataset.action;
  pending = { node: true, action };
  const verb = action === "drain" ? "Drain" : "Enable";
  $("confirm-title").textContent = `${verb} this node?`;
  $("confirm-text").textContent = NODE_ACTIONS[action];
  $("confirm-ok").textContent = `${verb} node`;
  $("confirm").showModal();
}

function confirmAction(group, address, action) {
  pending = { group, address, action };
  const verb = action[0].toUpperCase() + action.slice(1);
  $("confirm-title").textContent = `${verb} ${address}?`;
  // In a fleet the change goes to etcd, and every node applies it.
  const where = fleetNode ? " This applies to every node of the fleet." : "";
  $("confirm-text").textContent = `${address} in target group ${group} ${ACTIONS[action]}${where}`;
  $("confirm-ok").textContent = verb;
  $("confirm").showModal();
}

async function perform() {
  const p = pending;
  pending = null;
  $("confirm").close();
  if (!p) return;
  const path = p.node ? `/node/${p.action}` : `/target-groups/${encodeURIComponent(p.group)}/targets/`
    + `${encodeURIComponent(p.address)}/${p.action}`;
  try {
    const response = await fetch(api(path), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    showMessage(p.node ? `Node: ${body.service}.` : `${p.address} in ${p.group}: ${body.admin_state}.`, false);
  } catch (e) {
    showMessage(`Could not ${p.action} ${p.node ? "the node" : p.address}: ${e.message}`, true);
  }
  schedule(0);
}

function showMessage(text, failed) {
  const m = $("message");
  m.textContent = text;
  m.classList.toggle("warn", failed);
  m.hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  $("confirm-ok").addEventListener("click", perform);
  $("node-action").addEventListener("click", confirmNode);
  $("confirm-cancel").addEventListener("click", () => {
    pending = null;
    $("confirm").close();
  });
  $("confirm").addEventListener("close", () => { pending = null; });
  refresh();
});
