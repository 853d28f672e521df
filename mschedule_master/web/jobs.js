// mschedule web page: the Jobs view (saved scripts with immutable versions; docs/jobs.md).
// Loaded before app.js and called by it: jobsRoute() claims #/jobs and #/job/NAME[/VERSION],
// loadJobsView() (re)draws them, jobMeta(task) adds the job version to a task page. It uses
// app.js's helpers (h, api, badge, bar, countsText, when, ago, num, show, state) at call time.
"use strict";

const jobsView = {
  name: null, // the job shown on #/job/NAME
  version: null, // the version selected (null: the job's default)
  diffKey: null, // "a..b" of the diff shown, so a refresh does not redo it
};

function jobsRoute() {
  const list = location.hash === "#/jobs";
  const m = location.hash.match(/^#\/job\/([^/]+)(?:\/(\d+))?$/);
  if (!list && !m) return false;
  state.route = list ? "jobs" : "job";
  state.taskId = null;
  if (m) {
    const name = decodeURIComponent(m[1]);
    if (name !== jobsView.name) jobsView.diffKey = null;
    jobsView.name = name;
    jobsView.version = m[2] ? parseInt(m[2], 10) : null;
  }
  show(list ? "#jobs-page" : "#job-page");
  return true;
}

async function loadJobsView() {
  if (state.route === "jobs") return loadJobList();
  return loadJob(jobsView.name);
}

function jobHref(name, version) {
  return `#/job/${encodeURIComponent(name)}${version ? `/${version}` : ""}`;
}

async function loadJobList() {
  const doc = await api("GET", "/api/v1/jobs");
  const body = $("#jobs tbody");
  body.replaceChildren();
  $("#jobs-empty").hidden = doc.jobs.length > 0;
  for (const j of doc.jobs) {
    body.append(
      h("tr", { "data-job": j.name, onclick: () => (location.hash = jobHref(j.name)) },
        h("td", {}, h("a", { href: jobHref(j.name), class: "mono" }, j.name)),
        h("td", {}, j.description),
        h("td", {}, String(j.latest)),
        h("td", {}, String(j.default_version), j.pinned ? h("span", { class: "muted small" }, " pinned") : null),
        h("td", { title: when(j.updated_at) }, ago(j.updated_at)),
        h("td", {}, j.author)),
    );
  }
}

async function loadJob(name) {
  const enc = encodeURIComponent(name);
  const [job, runs] = await Promise.all([api("GET", `/api/v1/jobs/${enc}`), api("GET", `/api/v1/jobs/${enc}/runs`)]);
  if (state.route !== "job" || jobsView.name !== name) return;
  const selected = jobsView.version || job.default_version;
  $("#job-name").textContent = job.name;
  $("#job-default").textContent = `default version ${job.default_version}${job.pinned ? " (pinned)" : " (the latest)"}`;
  $("#job-description").textContent = job.description;
  const body = $("#job-versions tbody");
  body.replaceChildren();
  for (const v of job.versions) {
    const diffButton = v.version > 1
      ? h("button", { class: "link diff-prev", onclick: (ev) => { ev.stopPropagation(); showDiff(name, v.version - 1, v.version); } },
          `diff with ${v.version - 1}`)
      : null;
    body.append(
      h("tr", { "data-version": v.version, class: v.version === selected ? "selected" : "",
                onclick: () => (location.hash = jobHref(name, v.version)) },
        h("td", {}, h("a", { href: jobHref(name, v.version) }, `@${v.version}`)),
        h("td", { title: when(v.created_at) }, ago(v.created_at)),
        h("td", {}, v.author),
        h("td", {}, v.message),
        h("td", { class: "mono", title: v.script_sha256 }, v.script_sha256.slice(0, 16)),
        h("td", {}, diffButton)),
    );
  }
  await showVersion(name, selected);
  if (!jobsView.diffKey && job.versions.length > 1) await showDiff(name, selected > 1 ? selected - 1 : 1, Math.max(selected, 2));
  drawRuns(runs.runs);
}

async function showVersion(name, version) {
  const v = await api("GET", `/api/v1/jobs/${encodeURIComponent(name)}/versions/${version}`);
  $("#job-version-title").replaceChildren(h("code", {}, `${v.job}@${v.version}`));
  const defaults = Object.entries(v.defaults).map(([k, x]) => `${k}=${typeof x === "object" ? JSON.stringify(x) : x}`);
  const meta = [
    ["saved", `${when(v.created_at)} by ${v.author}`],
    ["message", v.message || "–"],
    ["script sha256", v.script_sha256],
    ["defaults", defaults.join(" ") || "none"],
  ];
  $("#job-version-meta").replaceChildren(...meta.flatMap(([k, x]) => [h("dt", {}, k), h("dd", {}, x)]));
  $("#job-script").textContent = v.script_encoding === "base64" ? "(binary script)" : v.script;
  $("#job-run").dataset.version = String(v.version);
}

async function showDiff(name, a, b) {
  const d = await api("GET", `/api/v1/jobs/${encodeURIComponent(name)}/diff?from=${a}&to=${b}`);
  jobsView.diffKey = `${a}..${b}`;
  $("#job-diff-title").textContent = `@${d.from} → @${d.to}`;
  const pre = $("#job-diff");
  pre.replaceChildren();
  const lines = d.diff ? d.diff.split("\n") : ["(identical)"];
  for (const line of lines) {
    const cls = line.startsWith("+") && !line.startsWith("+++") ? "add"
      : line.startsWith("-") && !line.startsWith("---") ? "del" : line.startsWith("@@") ? "hunk" : "";
    pre.append(h("span", { class: cls }, line), "\n");
  }
}

function drawRuns(runs) {
  const body = $("#job-runs tbody");
  body.replaceChildren();
  $("#job-runs-empty").hidden = runs.length > 0;
  for (const r of runs) {
    const total = Object.values(r.counts).reduce((x, y) => x + y, 0);
    body.append(
      h("tr", { "data-task": r.task_id, "data-version": r.version },
        h("td", {}, h("a", { href: `#/task/${encodeURIComponent(r.task_id)}`, class: "mono" }, r.task_id.slice(0, 12)),
          r.rerun_of ? h("div", { class: "muted small" }, `re-run of ${r.rerun_of.slice(0, 12)}`) : null),
        h("td", {}, `@${r.version}`),
        h("td", {}, badge(r.state)),
        h("td", { class: "progress" }, bar(r.counts, total), h("div", { class: "muted small" }, countsText(r.counts))),
        h("td", {}, r.submitted_by || "–"),
        h("td", { title: when(r.created_at) }, ago(r.created_at))),
    );
  }
}

async function runJobVersion(ev) {
  ev.preventDefault();
  const err = $("#job-run-error");
  err.hidden = true;
  const body = { version: parseInt($("#job-run").dataset.version, 10), author: "web page" };
  const targets = $("#job-targets").value.split(/[\s,]+/).filter(Boolean);
  if (targets.length) body.targets = targets;
  const parallel = num($("#job-parallel").value);
  if (parallel !== undefined) body.parallel = parallel;
  $("#job-run").disabled = true;
  try {
    const task = await api("POST", `/api/v1/jobs/${encodeURIComponent(jobsView.name)}/run`, body);
    location.hash = `#/task/${encodeURIComponent(task.id)}`;
  } catch (e) {
    err.textContent = fieldMessage(e); // app.js
    err.hidden = false;
  } finally {
    $("#job-run").disabled = false;
  }
}

// The task page's link to the job version it ran (and to the task it re-runs).
function jobMeta(t) {
  const out = [];
  if (t.job) {
    out.push(h("dt", {}, "job"), h("dd", {}, h("a", { id: "task-job", href: jobHref(t.job, t.job_version) }, `${t.job}@${t.job_version}`)));
  }
  if (t.rerun_of) {
    out.push(h("dt", {}, "re-run of"), h("dd", {}, h("a", { href: `#/task/${encodeURIComponent(t.rerun_of)}` }, t.rerun_of.slice(0, 12))));
  }
  if (t.script_sha256) out.push(h("dt", {}, "script sha256"), h("dd", { title: t.script_sha256 }, t.script_sha256.slice(0, 16)));
  return out;
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("#job-run-form");
  if (form) form.addEventListener("submit", runJobVersion);
});
