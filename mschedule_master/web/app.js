// mschedule web page: the fleet, a submit form, the task list and a live task page.
// Vanilla JS, no dependencies. Live updates come from the master's event stream
// (/api/v1/events, read with fetch so the bearer token can travel in a header); every
// event just means "look again", and a slow timer re-reads as a fallback.
"use strict";

const TOKEN_KEY = "mschedule.token";
const FINAL_TASK = new Set(["SUCCEED", "FAILED", "KILLED"]);
const GOOD = new Set(["SUCCEED"]);
const BAD = new Set(["FAILED", "TIMEOUT", "KILLED", "INTERRUPTED", "LOST", "UNREACHABLE", "REJECTED"]);
const ACTIVE = new Set(["DISPATCHED", "RUNNING"]); // may write output: sent to its agent, or running
// Sent is not started: a DISPATCHED target counts as waiting (as the CLI counts it), and one
// whose agent is offline is shown waiting for that agent.
const RUNNING = new Set(["RUNNING"]);
const WAITS_FOR_AGENT = new Set(["WAITING", "DISPATCHED"]);
const FALLBACK_POLL_MS = 5000;
const MAX_OUTPUT = 8192; // bytes of each stream's tail shown per target; "show all" fetches the rest
const LIVE_KEEP = 65536; // characters of live output kept per running target and stream

const $ = (sel) => document.querySelector(sel);
const state = {
  agents: [],
  checked: new Set(),
  route: null,
  taskId: null,
  refreshTimer: null,
  refreshDelay: 150, // grows with the task's size so a big rollout is not re-read on every event
  fullOutput: new Map(), // agent id -> {out, err}: whole outputs the user asked for
  taskLimit: 50, // tasks listed; "show older tasks" adds 50 (the API's page is at most 500)
  live: new Map(), // agent id -> live output of the shown task while the target runs (watchOutput)
  liveStop: null, // aborts the shown task's output stream
  offline: new Set(), // ids of offline agents, read while the shown task has targets waiting
};

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function ago(ts) {
  if (ts === null || ts === undefined) return "never";
  const s = Math.max(0, Math.round(Date.now() / 1000 - ts));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "–";
}

function dur(sec) {
  if (sec === null || sec === undefined) return "–";
  return sec < 120 ? `${sec.toFixed(1)}s` : `${(sec / 60).toFixed(1)}m`;
}

function badge(s) {
  const cls = GOOD.has(s) ? "good" : BAD.has(s) ? "bad" : ACTIVE.has(s) || s === "RUNNING" ? "active" : "idle";
  return h("span", { class: `badge ${cls}`, "data-state": s }, s);
}

function buckets(counts) {
  const b = { succeeded: 0, failed: 0, running: 0, waiting: 0, killed: 0, cancelled: 0 };
  for (const [s, n] of Object.entries(counts || {})) {
    if (GOOD.has(s)) b.succeeded += n;
    else if (s === "KILLED") b.killed += n;
    else if (BAD.has(s)) b.failed += n;
    else if (RUNNING.has(s)) b.running += n;
    else if (s === "CANCELLED") b.cancelled += n;
    else b.waiting += n;
  }
  return b;
}

function countsText(counts) {
  const b = buckets(counts);
  let t = `${b.succeeded} succeeded · ${b.failed} failed · ${b.running} running · ${b.waiting} waiting`;
  if (b.killed) t += ` · ${b.killed} killed`;
  if (b.cancelled) t += ` · ${b.cancelled} cancelled`;
  return t;
}

function bar(counts, total, el) {
  const b = buckets(counts);
  el = el || h("div", { class: "bar" });
  el.replaceChildren();
  const n = Math.max(total || 0, 1);
  const parts = [["good", b.succeeded], ["bad", b.failed], ["killed", b.killed], ["active", b.running], ["cancelled", b.cancelled]];
  for (const [k, v] of parts) {
    if (v) el.append(h("span", { class: k, style: `width:${(100 * v) / n}%` }));
  }
  return el;
}

function decode(text, encoding) {
  if (!text) return "";
  if (encoding !== "base64") return text;
  try {
    const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
    return new TextDecoder("utf-8", { fatal: false }).decode(bytes);
  } catch (e) {
    return "(binary output)";
  }
}

// ------------------------------------------------------------------ API

// The token lives in sessionStorage: gone with the tab, never shared with other tabs or kept
// on disk across browser restarts as localStorage would (issue 16).
function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

async function api(method, path, body) {
  const opts = { method, headers: { ...authHeaders() } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    setLive("offline", "cannot reach the master");
    throw new ApiError(0, "cannot reach the master", null);
  }
  if (resp.status === 401) {
    $("#auth").hidden = false;
  }
  const doc = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new ApiError(resp.status, doc.error || resp.statusText, doc.field || null);
  return doc;
}

// ------------------------------------------------------------------ live updates

function setLive(cls, text) {
  const el = $("#live");
  el.className = `live ${cls}`;
  el.textContent = text;
}

async function readEvents() {
  // Bounded: at most one reconnect a second for a long session.
  for (let attempt = 0; attempt < 100000; attempt++) {
    try {
      const resp = await fetch("/api/v1/events", { headers: { ...authHeaders(), Accept: "text/event-stream" } });
      if (resp.status === 401) {
        $("#auth").hidden = false;
        setLive("offline", "needs a token");
      } else if (resp.ok && resp.body) {
        setLive("on", "live");
        const reader = resp.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const chunk = buf.slice(0, i);
            buf = buf.slice(i + 2);
            if (/^event: (task|target|agent|resync)$/m.test(chunk)) scheduleRefresh();
          }
        }
      }
    } catch (e) {
      /* fall through to reconnect */
    }
    setLive("offline", "reconnecting…");
    await new Promise((r) => setTimeout(r, 1000 + Math.random() * 1000));
  }
}

// The shown task's own event stream carries its targets' live output ("output" events,
// only on /api/v1/events?task=ID): each chunk is appended to its target's output as it
// comes; the stored output replaces it once the target has ended.
async function watchOutput(taskId) {
  const stop = new AbortController();
  state.liveStop = stop;
  const url = `/api/v1/events?task=${encodeURIComponent(taskId)}`;
  for (let attempt = 0; attempt < 100000 && !stop.signal.aborted; attempt++) {
    try {
      const resp = await fetch(url, { headers: { ...authHeaders(), Accept: "text/event-stream" }, signal: stop.signal });
      if (resp.ok && resp.body) {
        const reader = resp.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const chunk = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const m = /^data: (.*)$/m.exec(chunk);
            if (m && /^event: output$/m.test(chunk)) onOutput(JSON.parse(m[1]).data);
            else if (/^event: hello$/m.test(chunk)) seedLive(taskId, stop); // subscribed: read what came before
          }
        }
      }
    } catch (e) {
      /* aborted, or the stream broke: reconnect unless aborted */
    }
    if (stop.signal.aborted) return;
    await new Promise((r) => setTimeout(r, 1000 + Math.random() * 1000));
  }
}

// What the running targets wrote before the page subscribed (at most the first 50 of them).
async function seedLive(taskId, stop) {
  try {
    const t = await api("GET", `/api/v1/tasks/${encodeURIComponent(taskId)}`);
    const running = Object.values(t.targets || {}).filter((x) => ACTIVE.has(x.state)).slice(0, 50);
    for (const x of running) {
      const base = `/api/v1/tasks/${encodeURIComponent(taskId)}/targets/${encodeURIComponent(x.agent_id)}/output`;
      for (const stream of ["stdout", "stderr"]) {
        const resp = await fetch(`${base}?stream=${stream}`, { headers: authHeaders(), signal: stop.signal });
        if (!resp.ok || resp.headers.get("X-Mschedule-Live") !== "true") continue;
        const bytes = new Uint8Array(await resp.arrayBuffer());
        if (bytes.length) onOutput({ agent_id: x.agent_id, stream, offset: 0, data: btoa(String.fromCharCode(...bytes)), encoding: "base64" });
      }
    }
  } catch (e) {
    /* the page re-reads on the next event anyway */
  }
}

function stopWatchingOutput() {
  if (state.liveStop) state.liveStop.abort();
  state.liveStop = null;
  state.live.clear();
}

function chunkBytes(d) {
  if (d.encoding === "base64") return Uint8Array.from(atob(d.data), (c) => c.charCodeAt(0));
  return new TextEncoder().encode(d.data);
}

function onOutput(d) {
  if (!d || !d.agent_id || (d.stream !== "stdout" && d.stream !== "stderr")) return;
  let l = state.live.get(d.agent_id);
  if (!l) {
    l = { stdout: "", stderr: "", ends: { stdout: 0, stderr: 0 },
          dec: { stdout: new TextDecoder(), stderr: new TextDecoder() } };
    state.live.set(d.agent_id, l);
  }
  const bytes = chunkBytes(d);
  const end = l.ends[d.stream];
  if (d.offset + bytes.length <= end) return; // seen already
  let text = d.offset > end ? `\n[${d.offset - end} bytes skipped]\n` : "";
  text += l.dec[d.stream].decode(d.offset < end ? bytes.subarray(end - d.offset) : bytes, { stream: true });
  l.ends[d.stream] = d.offset + bytes.length;
  l[d.stream] = (l[d.stream] + text).slice(-LIVE_KEEP);
  const pre = document.querySelector(`#targets details[data-agent="${CSS.escape(d.agent_id)}"] pre.output`);
  if (pre && pre.dataset.live === "1") {
    pre.append(d.stream === "stderr" ? h("span", { class: "stderr" }, text) : text);
  } else {
    scheduleRefresh(); // no live view of this target yet: draw it
  }
}

function scheduleRefresh() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    refresh();
  }, state.refreshDelay);
}

async function refresh() {
  try {
    if (state.route === "task") await loadTask(state.taskId);
    else if (state.route === "home") await Promise.all([loadAgents(), loadTasks()]);
    else if (state.route === "jobs" || state.route === "job") await loadJobsView(); // jobs.js
    else if (state.route === "schedules") await loadSchedulesView(); // schedules.js
  } catch (e) {
    if (e.status === 404 && state.route === "task") showNotFound(`Task ${state.taskId} not found.`);
    if (e.status === 404 && state.route === "job") showNotFound(e.message);
    if (e.status === 404 && state.route === "schedules") showNotFound(e.message);
  }
}

// ------------------------------------------------------------------ fleet

async function loadAgents() {
  const doc = await api("GET", "/api/v1/agents");
  state.agents = doc.agents.sort((a, b) => a.hostname.localeCompare(b.hostname) || a.id.localeCompare(b.id));
  const body = $("#fleet tbody");
  body.replaceChildren();
  const online = state.agents.filter((a) => a.online).length;
  $("#fleet-summary").textContent = `${online} online / ${state.agents.length}`;
  $("#fleet-empty").hidden = state.agents.length > 0;
  for (const a of state.agents) {
    const box = h("input", {
      type: "checkbox",
      class: "agent-check",
      value: a.id,
      "aria-label": `target ${a.hostname}`,
      onchange: (ev) => {
        if (ev.target.checked) state.checked.add(a.id);
        else state.checked.delete(a.id);
        showPicked();
      },
    });
    box.checked = state.checked.has(a.id);
    const labels = Object.entries(a.labels).sort().map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`));
    body.append(
      h("tr", { class: a.online ? "" : "offline", "data-agent": a.id },
        h("td", {}, box),
        h("td", { class: "mono", title: a.id }, a.id.slice(0, 12)),
        h("td", {}, a.hostname, h("div", { class: "muted small" }, a.ip.join(", "))),
        h("td", {}, labels, a.dc ? h("span", { class: "label dc" }, `dc:${a.dc}`) : null),
        h("td", {}, h("span", { class: `dot ${a.online ? "on" : "off"}` }), a.online ? "online" : "offline"),
        h("td", { title: when(a.last_seen) }, ago(a.last_seen)),
        h("td", {}, String((a.running || []).length))),
    );
  }
  showPicked();
}

function showPicked() {
  const names = state.agents.filter((a) => state.checked.has(a.id)).map((a) => `${a.hostname} (${a.id.slice(0, 8)})`);
  $("#picked").textContent = names.length ? `checked: ${names.join(", ")}` : "";
}

// ------------------------------------------------------------------ submit

function num(text) {
  const t = text.trim();
  if (t === "") return undefined;
  if (/^-?\d+$/.test(t)) return parseInt(t, 10);
  if (/^-?\d*\.\d+$/.test(t)) return parseFloat(t);
  return t; // "50%" or garbage: the master validates and names the field
}

// "parallel must be ..." already names its field: "parallel: parallel must be ..." says it twice.
function fieldMessage(e) {
  return e.field && !e.message.includes(e.field) ? `${e.field}: ${e.message}` : e.message;
}

async function submit(ev) {
  ev.preventDefault();
  const err = $("#submit-error");
  err.hidden = true;
  document.querySelectorAll(".invalid").forEach((el) => el.classList.remove("invalid"));
  const selectors = $("#selectors").value.split(/[\s,]+/).filter(Boolean);
  const body = {
    targets: [...state.checked, ...selectors],
    script_text: $("#script").value,
    on_abort: $("#on_abort").value,
  };
  for (const f of ["parallel", "fail_count", "fail_rate", "timeout"]) {
    const v = num($(`#${f}`).value);
    if (v !== undefined) body[f] = v;
  }
  if ($("#name").value.trim()) body.name = $("#name").value.trim();
  if (planField() !== undefined) body.plan = planField(); // plan.js
  const button = $("#submit");
  button.disabled = true;
  try {
    const task = await api("POST", "/api/v1/tasks", body);
    location.hash = `#/task/${encodeURIComponent(task.id)}`;
  } catch (e) {
    err.textContent = fieldMessage(e);
    err.hidden = false;
    const input = { script: "#script", script_text: "#script", targets: "#selectors" }[e.field] || `#${e.field}`;
    try {
      const el = document.querySelector(input);
      if (el) el.classList.add("invalid");
    } catch (_) {
      /* a field name that is no selector (e.g. a target selector) */
    }
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ tasks

async function loadTasks() {
  const filter = $("#task-filter").value;
  const doc = await api("GET", `/api/v1/tasks?limit=${state.taskLimit}${filter ? `&state=${filter}` : ""}`);
  $("#more-tasks").hidden = doc.next_offset === null || state.taskLimit >= 500;
  const body = $("#tasks tbody");
  body.replaceChildren();
  $("#tasks-empty").hidden = doc.tasks.length > 0;
  for (const t of doc.tasks) {
    const link = h("a", { href: `#/task/${encodeURIComponent(t.id)}`, class: "mono" }, t.id.slice(0, 12));
    body.append(
      h("tr", { "data-task": t.id, onclick: () => (location.hash = `#/task/${encodeURIComponent(t.id)}`) },
        h("td", {}, link),
        h("td", {}, t.name || h("span", { class: "muted" }, t.targets_spec.join(" "))),
        h("td", {}, badge(t.state)),
        h("td", { class: "progress" }, bar(t.counts, t.target_count), h("div", { class: "muted small" }, countsText(t.counts))),
        h("td", {}, String(t.target_count)),
        h("td", { title: when(t.created_at) }, ago(t.created_at))),
    );
  }
}

// ------------------------------------------------------------------ task page

async function loadTask(id) {
  const t = await api("GET", `/api/v1/tasks/${encodeURIComponent(id)}?max_output=${MAX_OUTPUT}`);
  if (state.route !== "task" || state.taskId !== id) return;
  $("#task-id").textContent = t.id;
  $("#task-state").replaceWith(Object.assign(badge(t.state), { id: "task-state" }));
  renderPlan(t); // plan.js: its steps, Approve / Abort -- with the state, before the await below
  $("#task-reason").textContent = (t.reason || "") + (t.revised_at ? ` — verdict revised ${when(t.revised_at)}` : "")
    + (t.delivery && t.delivery.reason ? ` — delivery ${t.delivery.reason}` : "");
  const meta = [
    ["targets", t.targets_spec.join(" ")],
    ["parallel", t.parallel],
    ["fail count", t.fail_count === -1 ? "no limit" : t.fail_count],
    ["fail rate", t.fail_rate === null || t.fail_rate === -1 ? "no limit" : t.fail_rate],
    ["timeout", t.timeout ? `${t.timeout}s` : "none"],
    ["on abort", t.on_abort],
    ["created", when(t.created_at)],
    ["finished", when(t.finished_at)],
  ];
  const items = [...meta.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]), ...jobMeta(t)]; // jobs.js
  $("#task-meta").replaceChildren(...metaPairs(items));
  bar(t.counts, t.target_count, $("#task-bar"));
  state.offline = await offlineAgents(t);
  if (state.route !== "task" || state.taskId !== id) return;
  const forOffline = Object.values(t.targets || {}).filter(waitsForOfflineAgent).length;
  $("#task-counts").textContent = `${countsText(t.counts)} — ${plural(t.target_count, "target")}` +
    (forOffline ? ` — ${forOffline} waiting for an offline agent` : "");
  $("#task-script").textContent = t.script_encoding === "base64" ? "(binary script)" : t.script;
  $("#kill").disabled = FINAL_TASK.has(t.state);
  const failedOrNotRun = Object.values(t.counts).length && Object.entries(t.counts).some(([s, n]) => n && s !== "SUCCEED");
  $("#rerun-failed").disabled = !FINAL_TASK.has(t.state) || !failedOrNotRun;
  state.refreshDelay = Math.min(2000, Math.max(150, 2 * t.target_count));
  const body = $("#targets tbody");
  const closed = new Set([...body.querySelectorAll("details:not([open])")].map((d) => d.dataset.agent));
  body.replaceChildren();
  const targets = Object.values(t.targets || {}).sort((a, b) => (a.hostname || "").localeCompare(b.hostname || ""));
  for (const x of targets) body.append(...targetRows(x, closed));
}

// The offline agents, when some target of the task still waits for its agent (else none:
// nothing to read).
async function offlineAgents(t) {
  if (!Object.values(t.targets || {}).some((x) => WAITS_FOR_AGENT.has(x.state))) return new Set();
  try {
    return new Set((await api("GET", "/api/v1/agents?online=false")).agents.map((a) => a.id));
  } catch (e) {
    return state.offline; // keep what was known; the next refresh reads again
  }
}

// Not yet accepted by an agent that is offline: it waits for that agent (until its delivery
// timeout), it does not run.
function waitsForOfflineAgent(x) {
  return WAITS_FOR_AGENT.has(x.state) && !x.acked && state.offline.has(x.agent_id);
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

// Each label with its value in one grid cell, so a narrow window never wraps a label
// to the end of one row and its value to the start of the next.
function metaPairs(nodes) {
  const out = [];
  for (let i = 0; i < nodes.length; i += 2) out.push(h("div", { class: "meta-item" }, nodes[i], nodes[i + 1]));
  return out;
}

// A running target's elapsed time, ticking between refreshes.
function elapsedCell(x) {
  if (x.state !== "RUNNING" || !x.started_at) return h("td", {}, dur(x.duration));
  return h("td", { class: "elapsed", "data-started": String(x.started_at) }, `${dur(Date.now() / 1000 - x.started_at)} so far`);
}

function tickElapsed() {
  for (const td of document.querySelectorAll("td.elapsed[data-started]")) {
    td.textContent = `${dur(Date.now() / 1000 - Number(td.dataset.started))} so far`;
  }
}

async function download(x, stream) {
  const url = `/api/v1/tasks/${encodeURIComponent(state.taskId)}/targets/${encodeURIComponent(x.agent_id)}/output?stream=${stream}`;
  try {
    const resp = await fetch(url, { headers: authHeaders() }); // the token travels in a header: no plain link
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const a = h("a", { href: URL.createObjectURL(await resp.blob()), download: `${state.taskId}-${x.hostname || x.agent_id}.${stream}` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (e) {
    alert(`could not download the output: ${e.message}`);
  }
}

function targetRows(x, closed) {
  const full = state.fullOutput.get(x.agent_id);
  const live = !full && ACTIVE.has(x.state) ? state.live.get(x.agent_id) : null; // running: what it wrote so far
  const out = full ? full.out : live ? live.stdout : decode(x.output, x.output_encoding);
  const err = full ? full.err : live ? live.stderr : decode(x.stderr, x.stderr_encoding);
  const row = h("tr", { "data-agent": x.agent_id, "data-state": x.state },
    h("td", { class: "mono", title: x.agent_id }, x.agent_id.slice(0, 12)),
    h("td", {}, x.hostname || ""),
    h("td", {}, waitsForOfflineAgent(x) ? Object.assign(badge(x.state), { className: "badge idle" }) : badge(x.state),
      waitsForOfflineAgent(x)
        ? h("div", { class: "small waiting-offline", title: "the agent is offline: the task waits for it until its delivery timeout" },
            "waiting for its agent (offline)")
        : null,
      x.agent_state && x.agent_state !== x.state ? h("div", { class: "muted small" }, "agent reported ", badge(x.agent_state)) : null,
      x.revised_from ? h("div", { class: "muted small revised" }, `revised from ${x.revised_from} at ${when(x.revised_at)}`) : null,
      x.kill_pending ? h("div", { class: "small kill-pending", title: "a kill was sent; the agent has not confirmed it yet" }, "KILL_PENDING") : null,
      x.error ? h("div", { class: "small error" }, `error: ${x.error}`) : null,
      x.reason ? h("div", { class: "muted small" }, x.reason) : null),
    h("td", { class: "mono exit" }, x.code === null ? "–" : x.signal ? `${x.code} (sig ${x.signal})` : String(x.code)),
    h("td", {}, when(x.started_at)),
    elapsedCell(x),
    h("td", { class: "muted small" }, live ? "live" : `${x.output_bytes} B out, ${x.stderr_bytes} B err`,
      !live && x.output_bytes ? h("button", { class: "link download", "data-stream": "stdout", onclick: () => download(x, "stdout") }, " ⤓ out") : null,
      !live && x.stderr_bytes ? h("button", { class: "link download", "data-stream": "stderr", onclick: () => download(x, "stderr") }, " ⤓ err") : null));
  if (!out && !err) return [row];
  const pre = h("pre", { class: "output", "data-live": live ? "1" : "0" }, out);
  if (x.output_truncated) pre.append(h("span", { class: "muted" }, "\n[the agent kept only the head and tail]"));
  if (err) pre.append(h("span", { class: "stderr" }, (out && !out.endsWith("\n") ? "\n" : "") + err));
  const clipped = !full && (x.output_clipped || x.stderr_clipped)
    ? h("div", { class: "muted small" }, `showing the last ${MAX_OUTPUT / 1024} KiB of each stream `,
        h("button", { class: "link show-all", onclick: () => showAll(x) },
          `show all (${x.output_bytes + x.stderr_bytes} bytes)`))
    : null;
  const details = h("details", { "data-agent": x.agent_id }, h("summary", {}, "output"), clipped, pre);
  details.open = !closed.has(x.agent_id); // open unless the user closed it
  return [row, h("tr", { class: "output-row" }, h("td", { colspan: 7 }, details))];
}

async function showAll(x) {
  const base = `/api/v1/tasks/${encodeURIComponent(state.taskId)}/targets/${encodeURIComponent(x.agent_id)}/output`;
  const text = async (url) => {
    const resp = await fetch(url, { headers: authHeaders() });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    return new TextDecoder("utf-8", { fatal: false }).decode(await resp.arrayBuffer());
  };
  try {
    const [out, err] = await Promise.all([text(base), text(`${base}?stream=stderr`)]);
    state.fullOutput.set(x.agent_id, { out, err });
    refresh();
  } catch (e) {
    alert(`could not load the output: ${e.message}`);
  }
}

// Re-run: the same script, limits and selectors (the selectors resolve again: today's fleet),
// or only the targets that failed or never ran (the master's rerun, on those agents).
async function rerun(failedOnly) {
  try {
    let task;
    if (failedOnly) {
      task = await api("POST", `/api/v1/tasks/${encodeURIComponent(state.taskId)}/rerun`, { failed: true });
    } else {
      const t = await api("GET", `/api/v1/tasks/${encodeURIComponent(state.taskId)}?targets=0`);
      const body = { targets: t.targets_spec, parallel: t.parallel, fail_count: t.fail_count, timeout: t.timeout,
        on_abort: t.on_abort, env: t.env, name: t.name, delivery_timeout: t.delivery_timeout };
      for (const f of ["fail_rate", "cwd", "output_cap"]) if (t[f] !== null) body[f] = t[f];
      if (t.script_encoding === "base64") body.script = t.script;
      else body.script_text = t.script;
      task = await api("POST", "/api/v1/tasks", body);
    }
    location.hash = `#/task/${encodeURIComponent(task.id)}`;
  } catch (e) {
    alert(`re-run failed: ${fieldMessage(e)}`);
  }
}

async function kill() {
  if (!confirm(`Kill task ${state.taskId}? Running targets are killed, waiting ones cancelled.`)) return;
  try {
    await api("POST", `/api/v1/tasks/${encodeURIComponent(state.taskId)}/kill`, {});
  } catch (e) {
    alert(`kill failed: ${e.message}`);
  }
  scheduleRefresh();
}

// ------------------------------------------------------------------ routing

function show(id) {
  for (const m of ["#home", "#task-page", "#jobs-page", "#job-page", "#schedules-page", "#not-found"]) $(m).hidden = m !== id;
}

function showNotFound(text) {
  $("#not-found-text").textContent = text;
  show("#not-found");
}

function route() {
  const m = location.hash.match(/^#\/task\/(.+)$/);
  if (!m && (jobsRoute() || schedulesRoute())) {
    // jobs.js: #/jobs, #/job/NAME[/VERSION]; schedules.js: #/schedules, #/schedule/NAME
    stopWatchingOutput();
  } else if (m) {
    const id = decodeURIComponent(m[1]);
    if (state.taskId !== id || !state.liveStop) {
      stopWatchingOutput();
      watchOutput(id);
    }
    state.route = "task";
    state.taskId = id;
    state.fullOutput.clear();
    $("#targets tbody").replaceChildren();
    show("#task-page");
  } else {
    stopWatchingOutput();
    state.route = "home";
    state.taskId = null;
    state.refreshDelay = 150;
    show("#home");
  }
  refresh();
}

// What the token's role may do: the page hides the rest (style.css: [data-needs]). Until the
// answer comes, body[data-role] is "viewer": nothing the role may not do is ever shown.
async function loadRole() {
  try {
    const me = await api("GET", "/api/v1/whoami");
    document.body.dataset.role = me.role;
    $("#whoami").textContent = `${me.name} (${me.role})`;
  } catch (e) {
    document.body.dataset.role = "viewer";
  }
}

function init() {
  loadRole();
  $("#submit-form").addEventListener("submit", submit);
  $("#kill").addEventListener("click", kill);
  $("#rerun").addEventListener("click", () => rerun(false));
  $("#rerun-failed").addEventListener("click", () => rerun(true));
  setInterval(tickElapsed, 1000);
  $("#task-filter").addEventListener("change", () => loadTasks().catch(() => {}));
  $("#more-tasks").addEventListener("click", () => {
    state.taskLimit = Math.min(500, state.taskLimit + 50);
    loadTasks().catch(() => {});
  });
  $("#check-online").addEventListener("change", (ev) => {
    for (const a of state.agents) if (a.online) ev.target.checked ? state.checked.add(a.id) : state.checked.delete(a.id);
    document.querySelectorAll(".agent-check").forEach((b) => (b.checked = state.checked.has(b.value)));
    showPicked();
  });
  $("#auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#auth").hidden = true;
    loadRole();
    refresh();
  });
  window.addEventListener("hashchange", route);
  route();
  readEvents();
  setInterval(refresh, FALLBACK_POLL_MS);
}

init();
