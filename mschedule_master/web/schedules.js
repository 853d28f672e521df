// mschedule web page: the Schedules view (a job on a cron; docs/schedules.md).
// Loaded before app.js and called by it: schedulesRoute() claims #/schedules and
// #/schedule/NAME, loadSchedulesView() (re)draws them. It uses app.js's helpers (h, api,
// badge, when, ago, show, state) at call time.
"use strict";

const schedulesView = { name: null }; // the schedule shown on #/schedule/NAME

const OUTCOME_CLASS = { fired: "good", "caught-up": "good", queued: "active", missed: "idle",
                        "skipped-overlap": "idle", "not-started": "bad" };

function schedulesRoute() {
  const list = location.hash === "#/schedules";
  const m = location.hash.match(/^#\/schedule\/([^/]+)$/);
  if (!list && !m) return false;
  state.route = "schedules";
  state.taskId = null;
  schedulesView.name = m ? decodeURIComponent(m[1]) : null;
  show("#schedules-page");
  return true;
}

// "backup@3", or "backup@default" for a schedule that follows the job's default version
function jobRef(s) {
  return typeof s.version === "number" ? `${s.job}@${s.version}` : `${s.job}${s.version}`;
}

function scheduleHref(name) {
  return `#/schedule/${encodeURIComponent(name)}`;
}

// A fire time in the schedule's own zone, e.g. "2026-12-01 02:30 CET".
function fireTime(ts, tz) {
  if (ts === null || ts === undefined) return "–";
  const parts = new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZoneName: "short" }).formatToParts(new Date(ts * 1000));
  const p = Object.fromEntries(parts.map((x) => [x.type, x.value]));
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute} ${p.timeZoneName}`;
}

function outcomeBadge(o) {
  return h("span", { class: `badge ${OUTCOME_CLASS[o] || "idle"}`, "data-outcome": o }, o);
}

async function loadSchedulesView() {
  const doc = await api("GET", "/api/v1/schedules");
  if (state.route !== "schedules") return;
  drawScheduleList(doc.schedules);
  const card = $("#schedule-card");
  if (!schedulesView.name) {
    card.hidden = true;
    return;
  }
  const name = schedulesView.name;
  const s = await api("GET", `/api/v1/schedules/${encodeURIComponent(name)}`);
  if (state.route !== "schedules" || schedulesView.name !== name) return;
  drawSchedule(s);
  card.hidden = false;
}

function drawScheduleList(schedules) {
  const body = $("#schedules tbody");
  body.replaceChildren();
  $("#schedules-empty").hidden = schedules.length > 0;
  for (const s of schedules) {
    const toggle = h("button", { class: "link toggle", "data-needs": "admin", onclick: (ev) => { ev.stopPropagation(); pauseOrResume(s); } },
      s.paused ? "resume" : "pause");
    body.append(
      h("tr", { "data-schedule": s.name, class: s.name === schedulesView.name ? "selected" : "",
                onclick: () => (location.hash = scheduleHref(s.name)) },
        h("td", {}, h("a", { href: scheduleHref(s.name), class: "mono" }, s.name)),
        h("td", {}, h("a", { href: jobHref(s.job, typeof s.version === "number" ? s.version : null) }, jobRef(s))),
        h("td", { class: "mono" }, s.cron),
        h("td", {}, s.tz),
        h("td", {}, s.overlap),
        h("td", {}, s.misfire),
        h("td", { class: "schedule-state" }, s.paused ? h("span", { class: "badge idle" }, "paused") : h("span", { class: "badge good" }, "active")),
        h("td", { class: "next-fire" }, fireTime(s.next_fire, s.tz)),
        h("td", {}, toggle)),
    );
  }
}

function drawSchedule(s) {
  $("#schedule-name").textContent = s.name;
  const counts = Object.entries(s.counts).map(([k, n]) => `${k} ${n}`).join(", ");
  const meta = [
    ["job", jobRef(s)],
    ["cron", `${s.cron} in ${s.tz}`],
    ["overlap / misfire", `${s.overlap} / ${s.misfire}`],
    ["state", s.paused ? "paused" : "active"],
    ["created", `${when(s.created_at)} by ${s.created_by}`],
    ["outcomes", counts || "none yet"],
  ];
  if (s.missed_earlier) meta.push(["missed earlier", `${s.missed_earlier} (not listed one by one)`]);
  $("#schedule-meta").replaceChildren(...meta.flatMap(([k, x]) => [h("dt", {}, k), h("dd", {}, x)]));
  $("#schedule-next").replaceChildren(...s.next.map((t) => h("li", {}, fireTime(t, s.tz))));
  const body = $("#schedule-runs tbody");
  body.replaceChildren();
  $("#schedule-runs-empty").hidden = s.runs.length > 0;
  for (const r of s.runs) {
    body.append(
      h("tr", { "data-fire": r.fire_time, "data-outcome": r.outcome },
        h("td", {}, fireTime(r.fire_time, s.tz)),
        h("td", {}, outcomeBadge(r.outcome)),
        h("td", {}, r.task_id ? h("a", { href: `#/task/${encodeURIComponent(r.task_id)}`, class: "mono" }, r.task_id.slice(0, 12)) : "–"),
        h("td", {}, r.task_state ? badge(r.task_state) : "–"),
        h("td", { class: "small" }, r.error || "")),
    );
  }
}

async function pauseOrResume(s) {
  try {
    await api("POST", `/api/v1/schedules/${encodeURIComponent(s.name)}/${s.paused ? "resume" : "pause"}`, {});
  } catch (e) {
    alert(`${s.paused ? "resume" : "pause"} failed: ${e.message}`);
  }
  await loadSchedulesView();
}
