// mschedule web page: rollout plans (docs/rollout.md, "Plans"). The task page shows the
// plan as steps with the current one highlighted, and Approve / Abort buttons; the submit
// form takes an optional plan. Uses app.js's h(), api(), state and scheduleRefresh().
"use strict";

function planStepText(s) {
  if (s.kind === "pause") return s.pause === null ? "pause until approved" : `pause ${s.pause}s (or until approved)`;
  return `${s.targets} target${s.targets === 1 ? "" : "s"}, parallel ${s.parallel}`;
}

// The task page's plan: one item per resolved step, the current one marked.
function renderPlan(t) {
  const box = document.getElementById("task-plan");
  const stages = t.plan_stages || [];
  box.hidden = stages.length === 0;
  box.replaceChildren(...stages.map((s) =>
    h("li", { class: s.current ? "current" : null, "data-step": s.step, "aria-current": s.current ? "step" : null },
      h("span", { class: "muted small" }, `step ${s.step} `), planStepText(s))));
  for (const a of t.approvals || []) {
    box.append(h("li", { class: "approval muted small" }, `step ${a.step} approved by ${a.by}, ${when(a.at)}`));
  }
  const paused = t.state === "PAUSED";
  document.getElementById("approve").hidden = !paused;
  document.getElementById("abort").disabled = FINAL_TASK.has(t.state);
  document.getElementById("task-paused").textContent = paused && t.paused_at ? `paused since ${when(t.paused_at)}` : "";
}

// The submit form's plan: text (1,pause,5,20%,rest) or JSON steps; undefined when empty.
function planField() {
  const v = document.getElementById("plan").value.trim();
  if (!v) return undefined;
  if (v.startsWith("[")) {
    try {
      return JSON.parse(v);
    } catch (_) {
      return v; // the master says what is wrong with it
    }
  }
  return v;
}

async function planAction(action, question) {
  if (!confirm(question)) return;
  try {
    await api("POST", `/api/v1/tasks/${encodeURIComponent(state.taskId)}/${action}`, {});
  } catch (e) {
    alert(`${action} failed: ${e.message}`);
  }
  scheduleRefresh();
}

document.getElementById("approve").addEventListener("click", () =>
  planAction("approve", `Approve task ${state.taskId}? Its plan goes on with the next step.`));
document.getElementById("abort").addEventListener("click", () =>
  planAction("abort", `Abort task ${state.taskId}? Waiting targets are cancelled; it ends FAILED.`));
