// The atomq console: pages drawn from the server's /api (console.proto's
// messages as JSON). Every value reaches the page as text, never as markup.
"use strict";

const REFRESH_MS = 5000;
let session = null;
let timer = null;
let txnFilter = "";

function token() { return sessionStorage.getItem("atomq-token") || ""; }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function badge(word) { return el("span", { class: "badge " + word }, word); }

function setStatus(text, error) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.classList.toggle("error", !!error);
}

async function api(path, options) {
  const headers = Object.assign({}, (options || {}).headers);
  if (token()) headers["Authorization"] = "Bearer " + token();
  const res = await fetch(path, Object.assign({}, options, { headers }));
  const body = await res.json().catch(() => ({ code: "UNKNOWN", message: res.statusText }));
  if (res.status === 401) { showSignIn(body.message); throw new Error(body.message); }
  if (!res.ok) throw new Error(body.code + ": " + body.message);
  return body;
}

function age(nowMs, sinceMs) {
  const s = Math.max(0, Math.round((Number(nowMs) - Number(sinceMs)) / 1000));
  if (!Number(sinceMs)) return "-";
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return Math.round(s / 3600) + " h";
}

function stateName(s) { return String(s || "").replace(/^STATE_/, "").toLowerCase(); }

function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
  if (!rows.length) {
    const cols = document.querySelectorAll("#" + tableId + " thead th").length;
    body.append(el("tr", {}, el("td", { colspan: cols, class: "muted" }, "none")));
  }
}

function errorRow(cols, what, error) {
  return el("tr", { class: "error-row" }, el("td", {}, what),
            el("td", { colspan: cols - 1 }, error));
}

// --- pages ---

// A group member's version as its client address told it, or why it did not.
function memberVersion(m) {
  const r = m.replica;
  if (r.error) return el("span", { class: "version muted", title: r.error }, r.role);
  const behind = Number(r.lag) > 0 ? " (" + r.lag + " behind)" : "";
  return el("span", { class: "version", "data-address": m.address,
                      title: m.address + ": " + r.role + ", term " + r.term },
            "member " + r.member + ": " + r.appliedIndex + behind);
}

async function drawCluster() {
  const c = await api("/api/cluster");
  const rows = [];
  for (const n of c.nodes) {
    rows.push(el("tr", { "data-node": n.id },
      el("td", {}, n.role), el("td", { class: "id" }, n.id + (n.self ? " (this node)" : "")),
      el("td", { class: "id" }, n.members.map((m) => m.address).join(" | ")),
      el("td", {}, ...n.members.map((m) =>
        el("span", { class: "badge " + m.health, title: m.error || m.address }, m.health))),
      el("td", {}, ...n.members.filter((m) => m.replica).map(memberVersion))));
  }
  fill("nodes", rows);
  const replicas = (c.group && c.group.replicas) || [];
  document.getElementById("group-box").hidden = replicas.length === 0;
  fill("group", replicas.map((r) => el("tr", { "data-member": r.member },
    el("td", {}, r.member), el("td", {}, badge(r.role)), el("td", { class: "num" }, r.term),
    el("td", { class: "num" }, r.leaderMember), el("td", { class: "num" }, r.commitIndex),
    el("td", { class: "num" }, r.appliedIndex), el("td", { class: "num" }, r.lag),
    el("td", { class: "id" }, r.peerAddress), el("td", {}, r.error || r.fault))));
}

function notAcked(t) {
  return (t.participants || []).filter((p) => !p.acknowledged).map((p) => p.participant).join(", ");
}

async function drawTransactions() {
  const q = txnFilter ? "?txn=" + encodeURIComponent(txnFilter) : "";
  const t = await api("/api/transactions" + q);
  const doubtOnly = document.getElementById("txn-doubt").checked;
  const canResolve = session.roles.includes("operator");
  const prepared = [], heuristic = [], coordinator = [];
  for (const p of t.participants) {
    if (p.error) { prepared.push(errorRow(9, p.participant, p.error)); continue; }
    for (const x of p.transactions) {
      if (doubtOnly && !x.inDoubt) continue;
      const resolve = x.inDoubt && canResolve
        ? el("button", { class: "danger resolve", type: "button",
                         onclick: () => openResolve(p.participant, x.txnId) }, "Resolve…")
        : null;
      prepared.push(el("tr", { "data-txn": x.txnId, "data-participant": p.participant },
        el("td", {}, p.participant), el("td", { class: "id" }, x.txnId),
        el("td", {}, stateName(x.state)), el("td", {}, x.protocol === "THREE_PC" ? "3pc" : "2pc"),
        el("td", { class: "id" }, x.coordinatorId), el("td", { class: "num" }, age(t.nowUnixMs, x.preparedUnixMs)),
        el("td", {}, (x.participants || []).map((y) => y.participant).join(", ")),
        el("td", {}, x.inDoubt ? el("span", { class: "badge mixed" }, "in doubt") : "no"),
        el("td", {}, resolve)));
    }
    for (const h of p.heuristic) {
      const mixed = h.conflictingState && h.conflictingState !== "TXN_STATE_UNSPECIFIED";
      heuristic.push(el("tr", { "data-txn": h.txnId, "data-participant": p.participant },
        el("td", {}, p.participant), el("td", { class: "id" }, h.txnId),
        el("td", {}, stateName(h.state)), el("td", {}, h.resolvedBy || "?"),
        el("td", { class: "num" }, age(t.nowUnixMs, h.resolvedUnixMs)), el("td", {}, h.operatorNote),
        el("td", {}, mixed ? el("span", { class: "badge mixed" },
          "MIXED: " + stateName(h.conflictingState) + " by " + h.conflictBy) : "no")));
    }
  }
  for (const c of t.coordinators) {
    if (c.error) { coordinator.push(errorRow(7, c.coordinator, c.error)); continue; }
    for (const x of c.transactions) {
      coordinator.push(el("tr", { "data-txn": x.txnId },
        el("td", {}, c.coordinator), el("td", { class: "id" }, x.txnId), el("td", {}, stateName(x.state)),
        el("td", {}, x.protocol === "THREE_PC" ? "3pc" : "2pc"),
        el("td", { class: "num" }, age(t.nowUnixMs, x.createdUnixMs)), el("td", {}, notAcked(x)),
        el("td", {}, x.reason)));
    }
  }
  fill("prepared", prepared);
  fill("heuristic", heuristic);
  fill("coordinator-txns", coordinator);
}

// Per participant: messages per second (from the sampled counters) and
// ready messages, summed over its queues.
function series(history) {
  const out = {};
  const samples = history.samples;
  for (let i = 0; i < samples.length; i++) {
    for (const p of samples[i].participants) {
      if (p.error) continue;
      const s = out[p.participant] = out[p.participant] || { t: [], enq: [], ack: [], dlv: [], ready: [] };
      const sum = (f) => p.queues.reduce((a, q) => a + Number(q[f] || 0), 0);
      s.t.push(Number(samples[i].nowUnixMs));
      s.ready.push(sum("ready"));
      s.enq.push(sum("enqueuedTotal"));
      s.dlv.push(sum("deliveredTotal"));
      s.ack.push(sum("ackedTotal"));
    }
  }
  for (const s of Object.values(out)) {
    for (const f of ["enq", "dlv", "ack"]) {
      const rate = [];
      for (let i = 1; i < s.t.length; i++) {
        const dt = (s.t[i] - s.t[i - 1]) / 1000;
        rate.push(dt > 0 ? Math.max(0, s[f][i] - s[f][i - 1]) / dt : 0);
      }
      s[f + "Rate"] = rate;
    }
  }
  return out;
}

function chart(title, lines, labels) {
  const W = 360, H = 110, ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  const max = Math.max(1, ...lines.flat());
  lines.forEach((ys, k) => {
    if (ys.length < 1) return;
    const pts = ys.map((y, i) => [(ys.length === 1 ? W : (i / (ys.length - 1)) * (W - 4)) + 2,
                                  H - 6 - (y / max) * (H - 22)].join(","));
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke-width", "1.8");
    line.setAttribute("class", "s" + k);
    svg.append(line);
  });
  const top = document.createElementNS(ns, "text");
  top.setAttribute("x", W - 2); top.setAttribute("y", 10); top.setAttribute("font-size", "10");
  top.setAttribute("text-anchor", "end");
  top.textContent = "max " + (Math.round(max * 10) / 10);
  svg.append(top);
  return el("div", { class: "chart" }, el("h3", {}, title), svg,
    el("div", { class: "legend" }, ...labels.map((l, k) => el("span", { class: "s" + k }, "— " + l))));
}

async function drawQueues() {
  const [q, h] = await Promise.all([api("/api/queues"), api("/api/history")]);
  const s = series(h);
  const span = (h.samples.length * h.sampleMs) / 1000;
  const last = span < 120 ? Math.round(span) + " s" : Math.round(span / 60) + " min";
  const charts = [];
  for (const [p, x] of Object.entries(s)) {
    charts.push(chart(p + ": messages/s, last " + last,
                      [x.enqRate, x.dlvRate, x.ackRate], ["enqueued", "delivered", "acked"]));
    charts.push(chart(p + ": ready messages", [x.ready], ["ready"]));
  }
  document.getElementById("charts").replaceChildren(...charts);
  // Rates per queue from the last two samples.
  const latest = h.samples.slice(-2);
  const rate = (p, name, f) => {
    if (latest.length < 2) return "-";
    const at = (k) => {
      const part = latest[k].participants.find((y) => y.participant === p);
      const one = part && part.queues.find((y) => y.name === name);
      return one ? Number(one[f]) : NaN;
    };
    const dt = (Number(latest[1].nowUnixMs) - Number(latest[0].nowUnixMs)) / 1000;
    const v = (at(1) - at(0)) / dt;
    return isFinite(v) ? (Math.round(Math.max(0, v) * 10) / 10) : "-";
  };
  const rows = [];
  for (const p of q.participants) {
    if (p.error) { rows.push(errorRow(10, p.participant, p.error)); continue; }
    for (const x of p.queues) {
      rows.push(el("tr", { "data-queue": p.participant + "/" + x.name },
        el("td", {}, p.participant), el("td", { class: "id" }, x.name),
        el("td", { class: "num" }, x.ready), el("td", { class: "num" }, x.leased),
        el("td", { class: "num" }, x.pendingInTxn), el("td", { class: "num" }, x.deadLetteredTotal),
        el("td", { class: "id" }, x.deadLetterQueue || "-"), el("td", { class: "num" }, x.version),
        el("td", { class: "num" }, rate(p.participant, x.name, "enqueuedTotal")),
        el("td", { class: "num" }, rate(p.participant, x.name, "ackedTotal"))));
    }
  }
  fill("queues", rows);
}

const PAGES = { cluster: drawCluster, transactions: drawTransactions, queues: drawQueues };

function page() {
  const name = location.hash.slice(1);
  return PAGES[name] ? name : "cluster";
}

async function refresh() {
  clearTimeout(timer);
  if (!session) return;
  const name = page();
  for (const p of Object.keys(PAGES)) {
    document.getElementById("page-" + p).hidden = p !== name;
    document.getElementById("nav-" + p).classList.toggle("active", p === name);
  }
  try {
    await PAGES[name]();
    setStatus("updated " + new Date().toLocaleTimeString());
    document.body.dataset.drawn = name;
  } catch (e) {
    setStatus(String(e.message || e), true);
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

// --- signing in ---

function showSignIn(why) {
  session = null;
  for (const p of document.querySelectorAll(".page")) p.hidden = true;
  document.getElementById("signin").hidden = false;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  setStatus(why || "", !!why);
}

async function start() {
  try {
    session = await api("/api/session");
  } catch (e) {
    return;
  }
  document.getElementById("signin").hidden = true;
  document.getElementById("node").textContent =
    session.nodeRole + " " + session.nodeId + " · " + session.version;
  document.getElementById("who").textContent = "signed in as " + session.identity +
    (session.open ? " (open cluster)" : " · " + (session.roles.join(", ") || "no roles"));
  document.getElementById("signout").hidden = !token();
  refresh();
}

// --- resolving ---

let resolving = null;

function openResolve(participant, txnId) {
  resolving = { participant, txnId };
  document.getElementById("resolve-txn").textContent = txnId;
  document.getElementById("resolve-participant").textContent = participant;
  document.getElementById("resolve-confirm-id").value = "";
  document.getElementById("resolve-note").value = "";
  document.getElementById("resolve-result").textContent = "";
  document.getElementById("resolve-submit").disabled = true;
  document.getElementById("resolve-dialog").showModal();
}

async function submitResolve() {
  const outcome = document.querySelector("input[name=outcome]:checked").value;
  const result = document.getElementById("resolve-result");
  document.getElementById("resolve-submit").disabled = true;
  try {
    const r = await api("/api/resolve", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Atomq-Console": "1" },
      body: JSON.stringify({ participant: resolving.participant, txnId: resolving.txnId, outcome,
                             operatorNote: document.getElementById("resolve-note").value }),
    });
    result.textContent = "Resolved: " + stateName(r.state) + (r.heuristic ? " (heuristic)" : "");
    result.className = "yes-ok";
    setTimeout(() => { document.getElementById("resolve-dialog").close(); refresh(); }, 800);
  } catch (e) {
    result.textContent = String(e.message || e);
    result.className = "unreachable";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  window.addEventListener("hashchange", refresh);
  document.getElementById("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("atomq-token", document.getElementById("token").value.trim());
    start();
  });
  document.getElementById("signout").addEventListener("click", () => {
    sessionStorage.removeItem("atomq-token");
    showSignIn("signed out");
  });
  document.getElementById("txn-form").addEventListener("submit", (e) => {
    e.preventDefault();
    txnFilter = document.getElementById("txn-search").value.trim();
    refresh();
  });
  document.getElementById("txn-clear").addEventListener("click", () => {
    txnFilter = "";
    document.getElementById("txn-search").value = "";
    refresh();
  });
  document.getElementById("txn-doubt").addEventListener("change", refresh);
  document.getElementById("resolve-confirm-id").addEventListener("input", (e) => {
    document.getElementById("resolve-submit").disabled = e.target.value.trim() !== resolving.txnId;
  });
  document.getElementById("resolve-cancel").addEventListener("click", () =>
    document.getElementById("resolve-dialog").close());
  document.getElementById("resolve-submit").addEventListener("click", submitResolve);
  start();
});
