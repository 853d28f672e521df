"""The web page in Debian's headless Chromium (Playwright), against a real master,
broker and agents: submit a task from the page, watch it finish, see its output."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from harness.require import in_ci, require_tools

IN_CI = in_ci()
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        require_tools("chromium", why="the browser test drives it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if IN_CI:
            raise
        pytest.skip("the playwright package is not installed")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                               args=CHROMIUM_ARGS, headless=True)  # fmt: skip
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    p.set_default_timeout(30_000)
    p.expected_errors = []  # substrings of console errors a test provokes on purpose
    try:
        yield p
        unexpected = [e for e in errors if not any(x in e for x in p.expected_errors)]
        assert unexpected == [], unexpected
    finally:
        context.close()


def test_submit_from_the_page_and_see_output(ui_fleet, page, artifacts_dir):
    page.goto(ui_fleet.url + "/")
    fleet_rows = page.locator("#fleet tbody tr")
    fleet_rows.nth(2).wait_for()
    assert fleet_rows.count() == 3
    assert page.locator("#fleet tbody").inner_text().count("online") == 3
    assert "role=db" in page.locator("#fleet").inner_text()
    page.locator("#live.on").wait_for()  # the event stream is connected

    # Targets: two checked agents (the role=web ones) plus a selector for the third.
    web_rows = page.locator("#fleet tbody tr", has_text="role=web")
    for i in range(2):
        web_rows.nth(i).locator("input.agent-check").check()
    page.fill("#selectors", "role=db")
    page.fill("#script", "echo from-the-browser-$((40+2))\necho warn >&2\nuname -s")
    page.fill("#parallel", "2")
    page.fill("#timeout", "60")
    page.fill("#name", "browser test")
    page.click("#submit")

    page.wait_for_url("**/#/task/*")
    page.locator("#task-state[data-state=SUCCEED]").wait_for(timeout=60_000)
    targets = page.locator("#targets tbody tr[data-agent]")
    assert targets.count() == 3
    assert page.locator("#targets tbody tr[data-state=SUCCEED]").count() == 3
    outputs = page.locator("#targets pre.output")
    assert outputs.count() == 3
    for i in range(3):
        text = outputs.nth(i).inner_text()
        assert "from-the-browser-42" in text and "Linux" in text and "warn" in text
    assert page.locator("#targets td.exit").all_inner_texts() == ["0", "0", "0"]
    assert "3 succeeded" in page.locator("#task-counts").inner_text()
    assert page.locator("#kill").is_disabled()
    page.screenshot(path=str(artifacts_dir / "ui-task-page.png"), full_page=True)

    # Back on the home page the task is listed as succeeded.
    page.click("a.button:has-text('Back')")
    row = page.locator("#tasks tbody tr", has_text="browser test")
    row.locator("[data-state=SUCCEED]").wait_for()
    page.screenshot(path=str(artifacts_dir / "ui-home.png"), full_page=True)


def test_kill_button_stops_a_running_task(ui_fleet, page, artifacts_dir):
    page.goto(ui_fleet.url + "/")
    page.locator("#fleet tbody tr").nth(2).wait_for()
    page.fill("#selectors", "role=web")
    page.fill("#script", "sleep 120")
    page.click("#submit")
    page.wait_for_url("**/#/task/*")
    page.locator("#targets tbody tr[data-state=RUNNING]").first.wait_for()
    page.once("dialog", lambda d: d.accept())
    page.click("#kill")
    page.locator("#task-state[data-state=KILLED]").wait_for(timeout=60_000)
    assert page.locator("#targets tbody tr[data-state=KILLED]").count() == 1
    assert page.locator("#targets tbody tr[data-state=CANCELLED]").count() == 1
    assert page.locator("#kill").is_disabled()
    assert "1 killed" in page.locator("#task-counts").inner_text()
    page.screenshot(path=str(artifacts_dir / "ui-task-killed.png"), full_page=True)
    # One click re-runs what did not succeed: the killed and the cancelled target.
    killed_id = page.locator("#task-id").inner_text()
    page.click("#rerun-failed")
    page.wait_for_url(lambda url: "#/task/" in url and killed_id not in url)
    page.locator("#targets tbody tr[data-agent]").nth(1).wait_for()
    assert page.locator("#targets tbody tr[data-agent]").count() == 2
    page.once("dialog", lambda d: d.accept())
    page.click("#kill")  # (sleep 120: do not leave it running)
    page.locator("#task-state[data-state=KILLED]").wait_for(timeout=60_000)


def test_bad_submission_shows_the_field(ui_fleet, page):
    page.expected_errors.append("status of 400 (Bad Request)")
    page.goto(ui_fleet.url + "/")
    page.locator("#fleet tbody tr").nth(2).wait_for()
    page.fill("#selectors", "role=nosuch")
    page.fill("#script", "true")
    page.click("#submit")
    err = page.locator("#submit-error")
    err.wait_for()
    assert "role=nosuch" in err.inner_text()
    page.fill("#selectors", "all")
    page.fill("#parallel", "0")
    page.click("#submit")
    page.locator("#parallel.invalid").wait_for()
    assert "parallel" in err.inner_text() and "parallel: parallel" not in err.inner_text()  # the field named once
    assert "#/task/" not in page.url


def test_a_target_that_could_not_start_shows_the_agents_reason(ui_fleet, page):
    import json
    import urllib.request

    missing = "/nonexistent/mschedule-page-cwd"
    body = json.dumps({"targets": ["role=db"], "script_text": "echo never", "cwd": missing}).encode()
    req = urllib.request.Request(ui_fleet.url + "/api/v1/tasks", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        task_id = json.loads(r.read())["id"]
    page.goto(f"{ui_fleet.url}/#/task/{task_id}")
    page.locator("#task-state[data-state=FAILED]").wait_for(timeout=60_000)
    row = page.locator("#targets tbody tr").first
    assert missing in row.locator(".error").inner_text()


def test_page_asks_for_the_token_when_the_master_needs_one(broker, tmp_path, page):
    import uuid

    from harness.fleet import start_master

    master = start_master(tmp_path / "master", broker.url, f"tok{uuid.uuid4().hex[:8]}/mschedule", token="page-secret")
    try:
        page.expected_errors.append("status of 401 (Unauthorized)")
        page.goto(master.http_url + "/")
        page.locator("#auth").wait_for()
        assert page.locator("#fleet-empty").is_hidden()  # nothing loaded without the token
        page.fill("#token", "page-secret")
        page.click("#auth-form button")
        page.locator("#fleet-empty").wait_for()  # the (empty) fleet loaded with the token
        page.locator("#live.on").wait_for()  # and the event stream connected with it
        assert page.locator("#auth").is_hidden()
        assert page.evaluate("sessionStorage.getItem('mschedule.token')") == "page-secret"
        assert page.evaluate("localStorage.getItem('mschedule.token')") is None  # never kept on disk
        page.locator("body[data-role=admin]").wait_for()  # the single token is an admin's
        assert page.locator("#submit-card").is_visible()
    finally:
        master.stop()


def test_a_viewer_token_sees_no_run_form_and_no_kill_button(broker, tmp_path, page):
    import uuid

    from harness.fleet import start_master

    config = tmp_path / "master.toml"
    config.write_text('[tokens.carol]\nrole = "viewer"\ntoken = "viewer-page-secret-0123"\n')
    master = start_master(tmp_path / "master", broker.url, f"view{uuid.uuid4().hex[:8]}/mschedule", config=str(config))
    try:
        page.expected_errors.append("status of 401 (Unauthorized)")
        page.goto(master.http_url + "/")
        page.locator("#auth").wait_for()
        page.fill("#token", "viewer-page-secret-0123")
        page.click("#auth-form button")
        page.locator("body[data-role=viewer]").wait_for()
        page.locator("#fleet-empty").wait_for()  # it reads
        assert page.locator("#whoami").inner_text() == "carol (viewer)"
        display = "e => getComputedStyle(e).display"
        assert page.eval_on_selector("#submit-card", display) == "none"  # it may not run anything
        assert page.eval_on_selector("#kill", display) == "none"  # nor kill (its own style, not its page's)
        assert page.eval_on_selector("#job-run-form", display) == "none"
    finally:
        master.stop()


def test_long_output_shows_its_tail_then_all_on_request(ui_fleet, page):
    page.goto(ui_fleet.url + "/")
    page.locator("#fleet tbody tr").nth(2).wait_for()
    page.fill("#selectors", "role=db")
    page.fill("#script", "echo FIRST-LINE; seq 1 5000; echo LAST-LINE")  # ~24 KB: more than the page's 8 KiB
    page.click("#submit")
    page.wait_for_url("**/#/task/*")
    page.locator("#task-state[data-state=SUCCEED]").wait_for(timeout=60_000)
    pre = page.locator("#targets pre.output")
    assert "LAST-LINE" in pre.inner_text() and "FIRST-LINE" not in pre.inner_text()
    page.click("button.show-all")
    page.locator("#targets pre.output", has_text="FIRST-LINE").wait_for()
    text = pre.inner_text()
    assert text.startswith("FIRST-LINE\n1\n2\n") and "LAST-LINE" in text
    assert page.locator("button.show-all").count() == 0


def test_unknown_task_page_says_so(ui_fleet, page):
    page.expected_errors.append("status of 404 (Not Found)")
    page.goto(ui_fleet.url + "/#/task/nosuch")
    page.locator("#not-found-text", has_text="Task nosuch not found.").wait_for()
    assert page.locator("#task-page").is_hidden()


def test_task_list_shows_older_tasks_on_request(ui_fleet, page):
    import json
    import urllib.request

    body = json.dumps({"targets": ["role=db"], "script_text": "true", "name": "bulk"}).encode()
    for _ in range(51):
        req = urllib.request.Request(ui_fleet.url + "/api/v1/tasks", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        urllib.request.urlopen(req, timeout=30).close()
    page.goto(ui_fleet.url + "/")
    rows = page.locator("#tasks tbody tr")
    rows.nth(49).wait_for()
    assert rows.count() == 50
    page.click("#more-tasks")
    rows.nth(50).wait_for()
    assert 50 < rows.count() <= 100


def test_jobs_view_lists_versions_shows_a_diff_runs_a_version_and_the_task_links_back(ui_fleet, page, artifacts_dir):
    import json
    import urllib.request
    import uuid

    name = f"page-{uuid.uuid4().hex[:6]}.sh"

    def post(path: str, doc: dict) -> dict:
        req = urllib.request.Request(ui_fleet.url + path, data=json.dumps(doc).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    post(f"/api/v1/jobs/{name}/versions", {"script_text": "echo page-v1\n", "description": "from the page test",
                                           "defaults": {"targets": ["role=db"]}, "message": "first"})  # fmt: skip
    post(f"/api/v1/jobs/{name}/versions", {"script_text": "echo page-v2\n", "description": "from the page test",
                                           "defaults": {"targets": ["role=db"]}, "message": "second"})  # fmt: skip
    earlier = post(f"/api/v1/jobs/{name}/run", {"version": 2})

    page.goto(ui_fleet.url + "/#/jobs")
    page.locator(f"#jobs tbody tr[data-job='{name}']").click()
    page.wait_for_url(f"**/#/job/{name}")
    page.locator("#job-versions tbody tr[data-version='1']").wait_for()
    assert page.locator("#job-versions tbody tr").count() == 2
    assert "default version 2" in page.locator("#job-default").inner_text()
    diff = page.locator("#job-diff")
    diff.locator("span.del", has_text="-echo page-v1").wait_for()
    assert diff.locator("span.add", has_text="+echo page-v2").count() == 1
    page.locator(f"#job-runs tbody tr[data-task='{earlier['id']}']").wait_for()
    page.screenshot(path=str(artifacts_dir / "ui-job-page.png"), full_page=True)

    page.locator("#job-versions tbody tr[data-version='1'] a").click()
    page.locator("#job-script", has_text="echo page-v1").wait_for()
    page.fill("#job-targets", "role=db")
    page.click("#job-run")
    page.wait_for_url("**/#/task/*")
    page.locator("#task-state[data-state=SUCCEED]").wait_for(timeout=60_000)
    assert "page-v1" in page.locator("#targets pre.output").inner_text()
    link = page.locator("#task-job")
    assert link.inner_text() == f"{name}@1"
    assert link.get_attribute("href").endswith(f"#/job/{name}/1")
    # The live task page re-renders as events arrive: a click can land on a link being
    # replaced. Click again (at most 3 times) until the navigation happens.
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(3):
        link.click()
        try:
            page.wait_for_url(f"**/#/job/{name}/1", timeout=10_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    page.locator("#job-versions tbody tr.selected[data-version='1']").wait_for()
    page.locator("#job-runs tbody tr[data-version='1']").wait_for()
    assert page.locator("#job-runs tbody tr").count() == 2


def test_schedules_view_lists_pauses_resumes_and_shows_fire_times_and_runs_with_outcomes(ui_fleet, page, artifacts_dir):
    import json
    import time
    import urllib.request
    import uuid

    tag = uuid.uuid4().hex[:6]
    job, minutely, berlin = f"page-sched-{tag}.sh", f"minutely-{tag}", f"berlin-{tag}"

    def post(path: str, doc: dict) -> dict:
        req = urllib.request.Request(ui_fleet.url + path, data=json.dumps(doc).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    post(f"/api/v1/jobs/{job}/versions", {"script_text": "echo scheduled-from-page\n", "defaults": {"targets": ["role=db"]}})
    first = post("/api/v1/schedules", {"name": minutely, "job": job, "cron": "* * * * *"})["next_fire"]
    post("/api/v1/schedules", {"name": berlin, "job": f"{job}@1", "cron": "30 2 * * *", "tz": "Europe/Berlin"})

    page.goto(ui_fleet.url + "/#/schedules")
    row = page.locator(f"#schedules tbody tr[data-schedule='{berlin}']")
    row.wait_for()
    assert "30 2 * * *" in row.inner_text() and "Europe/Berlin" in row.inner_text()
    assert " 02:30 " in row.locator("td.next-fire").inner_text()  # on the zone's own clock (01:30 UTC or 00:30 UTC)
    row.locator("button.toggle", has_text="pause").click()
    row.locator("td.schedule-state", has_text="paused").wait_for()
    assert row.locator("td.next-fire").inner_text() == "–"
    row.locator("button.toggle", has_text="resume").click()
    row.locator("td.schedule-state", has_text="active").wait_for()

    page.locator(f"#schedules tbody tr[data-schedule='{minutely}']").click()
    page.wait_for_url(f"**/#/schedule/{minutely}")
    page.locator("#schedule-card").wait_for()
    assert page.locator("#schedule-next li").count() == 5
    assert page.locator("#schedule-name").inner_text() == minutely
    # the master's own clock fires the minutely schedule; the page shows it with its task
    fired = page.locator(f"#schedule-runs tbody tr[data-fire='{first}'][data-outcome='fired']")
    fired.wait_for(timeout=int((first - time.time() + 40) * 1000))
    fired.locator("span.badge[data-state='SUCCEED']").wait_for(timeout=60_000)
    page.screenshot(path=str(artifacts_dir / "ui-schedules-page.png"), full_page=True)
    post(f"/api/v1/schedules/{minutely}/pause", {})
    fired.locator("a").click()
    page.wait_for_url("**/#/task/*")
    page.locator("#task-state[data-state=SUCCEED]").wait_for()
    assert "scheduled-from-page" in page.locator("#targets pre.output").inner_text()


def test_task_page_shows_elapsed_time_keeps_labels_with_values_downloads_and_reruns(ui_fleet, page, tmp_path):
    import json
    import urllib.request

    body = json.dumps({"targets": ["role=db"], "script_text": "echo started; sleep 3; echo done"}).encode()
    req = urllib.request.Request(ui_fleet.url + "/api/v1/tasks", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        task_id = json.loads(r.read())["id"]
    page.goto(f"{ui_fleet.url}/#/task/{task_id}")
    running = page.locator("#targets tbody tr[data-state=RUNNING] td.elapsed")
    running.wait_for()
    assert running.inner_text().endswith("so far")  # a running target's elapsed time
    pairs = page.evaluate("""[...document.querySelectorAll('#task-meta > *')]
                              .map(d => [d.className, d.children.length, d.children[0].tagName, d.children[1].tagName])""")
    assert len(pairs) >= 8 and all(p == ["meta-item", 2, "DT", "DD"] for p in pairs), pairs  # label and value together
    page.locator("#task-state[data-state=SUCCEED]").wait_for(timeout=60_000)
    assert page.locator("#rerun-failed").is_disabled()  # nothing failed
    with page.expect_download() as dl:
        page.click("#targets button.download[data-stream=stdout]")
    assert dl.value.path().read_bytes() == b"started\ndone\n"
    assert dl.value.suggested_filename.startswith(task_id) and dl.value.suggested_filename.endswith(".stdout")
    page.click("#rerun")  # the same script on the same selectors: a new task
    page.wait_for_url(lambda url: "#/task/" in url and task_id not in url)
    page.locator("#task-state[data-state=SUCCEED]").wait_for(timeout=60_000)
    assert "role=db" in page.locator("#task-meta").inner_text()
    new_id = page.locator("#task-id").inner_text()
    with urllib.request.urlopen(f"{ui_fleet.url}/api/v1/tasks/{new_id}?targets=0", timeout=10) as r:
        again = json.loads(r.read())
    assert again["script"] == "echo started; sleep 3; echo done" and again["targets_spec"] == ["role=db"]


def test_the_task_page_shows_a_running_targets_output_as_it_is_written(ui_fleet, page):
    import json
    import time
    import urllib.request

    page.goto(ui_fleet.url + "/")
    page.locator("#fleet tbody tr").nth(2).wait_for()
    page.fill("#selectors", "role=db")
    page.fill("#script", "echo start; sleep 5; echo end")
    page.click("#submit")
    page.wait_for_url("**/#/task/*")
    page.wait_for_function("document.querySelector('#targets pre.output')?.textContent.includes('start')",
                           timeout=10_000, polling=20)  # fmt: skip
    seen = time.time()
    task_id = page.url.rsplit("/", 1)[1]
    with urllib.request.urlopen(f"{ui_fleet.url}/api/v1/tasks/{task_id}", timeout=10) as r:
        (target,) = json.loads(r.read())["targets"].values()
    assert seen - target["started_at"] < 1.0, f"start shown {seen - target['started_at']:.2f} s after the script started"
    assert "end" not in page.locator("#targets pre.output").inner_text(), "shown only at the end"
    assert page.locator("#targets tbody tr[data-state=RUNNING]").count() == 1
    page.locator("#task-state[data-state=SUCCEED]").wait_for(timeout=30_000)
    assert page.locator("#targets pre.output").inner_text() == "start\nend\n"


def test_a_canary_from_the_page_pauses_shows_its_plan_and_the_approve_button_runs_the_rest(ui_fleet, page):
    page.goto(ui_fleet.url + "/")
    page.locator("#fleet tbody tr").nth(2).wait_for()
    page.fill("#selectors", "role=web")
    page.fill("#script", "echo canary")
    page.fill("#plan", "1,pause,rest")
    page.click("#submit")
    page.wait_for_url("**/#/task/*")
    page.locator("#task-state[data-state=PAUSED]").wait_for(timeout=60_000)
    page.locator("#task-plan li").nth(2).wait_for()  # (the page draws the plan with the state)
    assert page.locator("#task-plan li").count() == 3
    assert "pause until approved" in page.locator("#task-plan li.current").inner_text()
    assert page.locator("#approve").is_visible() and not page.locator("#abort").is_disabled()
    page.once("dialog", lambda d: d.accept())
    page.click("#approve")
    page.locator("#task-state[data-state=SUCCEED]").wait_for(timeout=60_000)
    assert page.locator("#targets tbody tr[data-state=SUCCEED]").count() == 2
    assert page.locator("#approve").is_hidden() and page.locator("#abort").is_disabled()


def test_a_target_sent_to_an_offline_agent_shows_as_waiting_for_it_not_running(broker, tmp_path, page):
    import json
    import urllib.request
    import uuid

    from harness.demo import start_demo_fleet

    fleet = start_demo_fleet(tmp_path, broker.url, f"away{uuid.uuid4().hex[:8]}/mschedule", labels=({"role": "away"},))
    try:
        agent = fleet.agents[0]
        agent_id = agent.agent_id
        agent.stop()
        deadline = time.monotonic() + 30
        while fleet.online_agents() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fleet.online_agents() == 0, "the master never saw the agent go"
        body = json.dumps({"targets": [agent_id], "script_text": "true", "delivery_timeout": 300}).encode()
        req = urllib.request.Request(fleet.url + "/api/v1/tasks", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            task_id = json.loads(r.read())["id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{fleet.url}/api/v1/tasks/{task_id}", timeout=10) as r:
                target = json.loads(r.read())["targets"][agent_id]
            if target["state"] == "DISPATCHED":
                break
            time.sleep(0.1)
        assert target["state"] == "DISPATCHED" and not target["acked"], target  # sent, never accepted

        page.goto(f"{fleet.url}/#/task/{task_id}")
        row = page.locator(f"#targets tbody tr[data-agent='{agent_id}'][data-state=DISPATCHED]")
        row.locator(".waiting-offline", has_text="waiting for its agent (offline)").wait_for()
        assert row.locator(".badge.idle").count() == 1  # not coloured as running
        counts = page.locator("#task-counts").inner_text()
        assert "0 running · 1 waiting" in counts and "1 target — 1 waiting for an offline agent" in counts, counts
        page.goto(fleet.url + "/")
        task_row = page.locator(f"#tasks tbody tr[data-task='{task_id}']")
        task_row.wait_for()
        assert "0 running · 1 waiting" in task_row.inner_text()  # the task list counts it so too
    finally:
        fleet.stop()
