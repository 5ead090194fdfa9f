// Ferry's status page: polls /status.json four times a second and draws it.
// Everything is built with textContent and DOM calls, never from HTML
// strings: addresses and alarm texts come from the cluster.
"use strict";

const POLL_MS = 250;
// While there is no leader or a failover is in progress, more often still:
// the moment writes come back is what the reader is waiting for.
const FAST_POLL_MS = 100;
let nextPoll = POLL_MS;
const TOKEN_KEY = "ferry-status-token";
const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function numCell(value, format, className) {
  const td = el("td", value === null || value === undefined ? "–" : (format ? format(value) : value),
    "num" + (className ? " " + className : ""));
  td.dataset.value = value === null || value === undefined ? "" : String(value);
  return td;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v : v.toFixed(1)) + " " + units[i];
}

function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  if (ms < 3600000) return Math.round(ms / 60000) + " min";
  return (ms / 3600000).toFixed(1) + " h";
}

function micros(us) {
  return us < 1000 ? us + " µs" : (us / 1000).toFixed(us < 10000 ? 2 : 1) + " ms";
}

function when(ms) {
  if (!ms) return "–";
  return new Date(ms).toLocaleString();
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function sparkline(values, className) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark " + (className || ""));
  svg.setAttribute("viewBox", "0 0 160 24");
  svg.setAttribute("preserveAspectRatio", "none");
  const line = document.createElementNS(ns, "polyline");
  const max = Math.max(1e-9, ...values);
  const step = values.length > 1 ? 160 / (values.length - 1) : 0;
  line.setAttribute("points", values.map((v, i) => (i * step).toFixed(1) + "," + (23 - (v / max) * 22).toFixed(1)).join(" "));
  svg.appendChild(line);
  return svg;
}

function renderMembers(report) {
  const rows = report.members.map((m) => {
    const tr = el("tr");
    tr.dataset.memberId = m.id;
    tr.dataset.role = m.role;
    if (m.role === "leader") tr.classList.add("leader");
    if (m.id === report.node.id) tr.classList.add("self");
    tr.appendChild(el("td", m.id, "id"));
    tr.appendChild(el("td", m.role, "role"));
    tr.appendChild(el("td", m.kind === "dr_standby" ? "DR standby" : "voter", "kind"));
    const address = el("td", null, "address");
    if (m.status_url) {
      const link = el("a", m.client_addr);
      link.href = m.status_url + "/";
      link.title = "raft " + m.raft_addr;
      address.appendChild(link);
    } else {
      address.textContent = m.client_addr;
      address.title = "raft " + m.raft_addr;
    }
    tr.appendChild(address);
    tr.appendChild(numCell(m.matched_index, null, "matched"));
    tr.appendChild(numCell(m.applied_index, null, "applied"));
    tr.appendChild(numCell(m.lag_entries, null, "lag-entries"));
    tr.appendChild(numCell(m.lag_ms, null, "lag-ms"));
    tr.appendChild(numCell(m.last_contact_ms, (v) => duration(v) + " ago", "last-contact"));
    tr.appendChild(el("td", m.health, "health health-" + m.health));
    return tr;
  });
  replaceRows(document.querySelector("#members tbody"), rows);
}

function renderRpo(report) {
  const standbys = report.rpo.standbys.map((s) => {
    const tr = el("tr");
    tr.dataset.memberId = s.id;
    tr.appendChild(el("td", s.id));
    tr.appendChild(numCell(s.lag_ms, null, "lag-ms"));
    tr.appendChild(numCell(s.lag_entries, null, "lag-entries"));
    tr.appendChild(numCell(s.bound_ms, null, "bound"));
    tr.appendChild(el("td", s.exceeded ? "past its bound" : "within bound", s.exceeded ? "health-lagging" : "health-ok"));
    return tr;
  });
  replaceRows(document.querySelector("#standbys tbody"), standbys);
  $("no-standbys").hidden = standbys.length > 0;
  const b = report.rpo.backup;
  const p = $("backup-rpo");
  if (!b) {
    p.textContent = "No backup chain is shipped from this member.";
  } else {
    const age = b.last_success_ms ? duration(report.generated_ms - b.last_success_ms) + " ago" : "never";
    p.textContent = "Backup chain: shipped to index " + b.shipped_index +
      (b.lag_entries === null ? "" : ", " + b.lag_entries + " applied entries not yet shipped") +
      "; last shipped " + age + (b.failures ? "; " + b.failures + " failed rounds" : "") + ".";
  }
}

function renderFailovers(report) {
  const rows = report.failovers.map((f) => {
    const tr = el("tr");
    tr.dataset.from = f.from;
    tr.dataset.to = f.to === null ? "" : f.to;
    tr.appendChild(el("td", when(f.at_ms)));
    tr.appendChild(el("td", f.from));
    tr.appendChild(el("td", f.to === null ? "electing…" : f.to, "to"));
    tr.appendChild(el("td", f.term === null ? "–" : f.term));
    const rto = numCell(f.rto_ms, duration, "rto");
    if (f.rto_ms === null) rto.textContent = "in progress";
    tr.appendChild(rto);
    return tr;
  });
  replaceRows(document.querySelector("#failovers tbody"), rows);
  $("no-failovers").hidden = rows.length > 0;
}

function renderTransfers(report) {
  const items = report.transfers.map((t) => {
    const row = el("div", null, "transfer");
    row.dataset.peer = t.peer;
    row.dataset.done = t.done_bytes;
    row.dataset.total = t.total_bytes;
    const label = t.direction === "send" ? "to member " + t.peer : "from member " + t.peer;
    row.appendChild(el("span", label + " · snapshot at " + t.snapshot_index + " · " + t.kind));
    const bar = el("progress");
    bar.max = Math.max(1, t.total_bytes);
    bar.value = t.done_bytes;
    row.appendChild(bar);
    row.appendChild(el("span", bytes(t.done_bytes) + " of " + bytes(t.total_bytes) + " · " + bytes(t.bytes_per_sec) + "/s", "figures"));
    return row;
  });
  $("transfers").replaceChildren(...items);
  $("no-transfers").hidden = items.length > 0;
}

function definitions(dl, pairs) {
  const children = [];
  for (const [term, value] of pairs) {
    children.push(el("dt", term));
    children.push(el("dd", value));
  }
  dl.replaceChildren(...children);
}

function renderChain(report) {
  const c = report.backup_chain;
  $("no-chain").hidden = !!c;
  if (!c) { $("chain").replaceChildren(); return; }
  definitions($("chain"), [
    ["checkpoints", c.checkpoint_count + (c.newest_checkpoints.length ? " (newest at " + c.newest_checkpoints.slice(-3).join(", ") + ")" : "")],
    ["log", c.log_first === null ? "none" : c.log_first + " – " + c.log_last],
    ["gaps", c.log_gaps.length ? c.log_gaps.map((g) => g[0] + "–" + g[1]).join(", ") : "none"],
    ["restore points", c.restorable_first === null ? "none" : "every index from " + c.restorable_first + " to " + c.restorable_last + (c.log_gaps.length ? ", except in the gaps" : "")],
    ["newest restore point", c.newest_restore_point_ms
      ? when(c.newest_restore_point_ms) + " (" + duration(Math.max(0, Date.now() - c.newest_restore_point_ms)) + " old)"
      : "–"],
  ]);
}

function renderEngine(report) {
  const e = report.engine;
  definitions($("engine"), [
    ["tables", bytes(e.table_bytes)],
    ["compaction debt", bytes(e.compaction_debt_bytes)],
    ["write amplification", e.write_amplification.toFixed(2)],
    ["write stalls", e.write_stalls + " (" + duration(e.stall_ms) + ")"],
    ["flushes · compactions", e.flushes + " · " + e.compactions],
  ]);
  const rows = e.levels.filter((l) => l.files > 0).map((l) => {
    const tr = el("tr");
    tr.appendChild(el("td", "L" + l.level));
    tr.appendChild(numCell(l.files));
    tr.appendChild(numCell(l.bytes, bytes));
    return tr;
  });
  replaceRows(document.querySelector("#levels tbody"), rows);
}

function renderTraffic(report) {
  const t = report.traffic;
  $("traffic-window").textContent = t.samples_ms.length ? "(last " + duration(t.samples_ms.length * t.interval_ms) + ", one point per " + duration(t.interval_ms) + ")" : "";
  const rows = t.methods.map((m) => {
    const tr = el("tr");
    tr.dataset.method = m.method;
    const last = m.per_sec.length - 1;
    tr.appendChild(el("td", m.method));
    tr.appendChild(numCell(Math.round(m.per_sec[last] * 10) / 10, null, "rate"));
    const spark = el("td");
    spark.appendChild(sparkline(m.per_sec));
    tr.appendChild(spark);
    tr.appendChild(numCell(m.p99_us[last], micros, "p99"));
    const spark2 = el("td");
    spark2.appendChild(sparkline(m.p99_us, "latency"));
    tr.appendChild(spark2);
    return tr;
  });
  replaceRows(document.querySelector("#traffic tbody"), rows);
  $("no-traffic").hidden = rows.length > 0;
}

function renderAlarms(report) {
  const items = report.alarms.map((a) => {
    const li = el("li", a.message, a.severity);
    li.dataset.code = a.code;
    return li;
  });
  if (!items.length) items.push(el("li", "None: the cluster is healthy as seen from here.", "none"));
  $("alarms").replaceChildren(...items);
}

function render(report) {
  const n = report.node;
  $("self-id").textContent = n.id;
  $("self-role").textContent = n.role;
  $("leader").textContent = n.leader_id === null ? "none" : n.leader_id;
  $("term").textContent = n.term;
  $("applied").textContent = n.applied_index;
  const updated = $("updated");
  updated.textContent = "updated " + new Date(report.generated_ms).toLocaleTimeString();
  updated.dataset.generated = report.generated_ms;
  const follower = n.role !== "leader";
  $("follower-note").hidden = !follower;
  if (follower) {
    $("follower-self").textContent = n.id;
    const link = $("leader-link");
    link.hidden = !n.leader_status_url;
    $("leader-unknown").hidden = !!n.leader_status_url;
    if (n.leader_status_url) {
      link.href = n.leader_status_url + "/";
      link.textContent = "Open the leader's page (member " + n.leader_id + ")";
    }
  }
  renderAlarms(report);
  renderMembers(report);
  renderRpo(report);
  renderFailovers(report);
  renderTransfers(report);
  renderChain(report);
  renderEngine(report);
  renderTraffic(report);
  // For scripts and tests: the document this rendering was made from.
  window.ferryLastReport = report;
  document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
}

function showLogin(message) {
  $("content").hidden = true;
  $("login").hidden = false;
  if (message) $("login-error").textContent = message;
}

async function poll() {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token && !$("login").hidden) {
    // Waiting for a login: asking again would only be refused again.
    setTimeout(poll, POLL_MS);
    return;
  }
  if (token) headers.Authorization = "Bearer " + token;
  try {
    const response = await fetch("/status.json", { headers, cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      showLogin(token || response.status === 403 ? body.error : "");
      return;
    }
    if (!response.ok) throw new Error("status.json: HTTP " + response.status);
    const report = await response.json();
    $("login").hidden = true;
    $("content").hidden = false;
    $("error").textContent = "";
    render(report);
    const failing = report.node.leader_id === null || report.failovers.some((f) => f.rto_ms === null);
    nextPoll = failing ? FAST_POLL_MS : POLL_MS;
  } catch (error) {
    $("error").textContent = " · cannot reach this member: " + error.message;
  } finally {
    setTimeout(poll, nextPoll);
  }
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const user = $("login-user").value;
  const password = $("login-password").value;
  try {
    const response = await fetch("/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user, password }),
    });
    const body = await response.json();
    if (!response.ok) { $("login-error").textContent = body.error || ("HTTP " + response.status); return; }
    sessionStorage.setItem(TOKEN_KEY, body.token);
    $("login-password").value = "";
    $("login").hidden = true;
  } catch (error) {
    $("login-error").textContent = error.message;
  }
});

poll();
