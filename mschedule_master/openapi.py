"""The OpenAPI 3.1 document served at ``/api/v1/openapi.json``.

Written out by hand so it says what a client needs to know; a test checks that its
paths and methods are exactly the routes ``api.py`` serves.
"""

from __future__ import annotations

from typing import Any

from mschedule_agent.protocol import PROTOCOL_VERSION

TASK_STATES = ["WAITING", "RUNNING", "PAUSED", "SUCCEED", "FAILED", "KILLED"]
TARGET_STATES = [
    "WAITING", "DISPATCHED", "RUNNING", "SUCCEED", "FAILED", "TIMEOUT",
    "KILLED", "INTERRUPTED", "LOST", "UNREACHABLE", "REJECTED", "CANCELLED",
]  # fmt: skip


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_NUM = {"type": ["number", "null"]}
#: Who did it; the master records "http:<client address>" when it is absent or null.
_AUTHOR = {"type": ["string", "null"], "maxLength": 200, "pattern": "^[^\\u0000]*$"}


def _exactly_one(*names: str) -> list[dict[str, Any]]:
    """``oneOf`` branches: exactly one of ``names`` is given as a string, the others absent or null."""
    return [
        {"required": [name], "properties": {n: {"type": "string"} if n == name else {"type": "null"} for n in names}}
        for name in names
    ]

#: A boolean query parameter: the spellings api.query_bool takes.
QUERY_BOOL = {"type": "string", "enum": ["true", "false", "True", "False", "1", "0", "yes", "no"]}
_MAX_VERSION = 2**31 - 1  # api_jobs.MAX_VERSION (openapi imports nothing of the master)
_VERSION_PATTERN = "^([1-9][0-9]{0,8}|latest|default)$"  # up to api_jobs.MAX_VERSION
_VERSION_QUERY = "^([1-9][0-9]{0,8}|latest|default)?$"  # empty = the parameter's default
_UNAUTH = _err("missing or wrong bearer token (when the master has one)")

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "field"],
        "properties": {
            "error": {"type": "string", "description": "what is wrong"},
            "field": {"type": ["string", "null"], "description": "the offending field, parameter or selector"},
        },
    },
    "Agent": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "hostname": {"type": "string"},
            "ip": {"type": "array", "items": {"type": "string"}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "version": {"type": "string"},
            "capacity": {"type": "integer"},
            "online": {"type": "boolean"},
            "dc": {"type": ["string", "null"], "description": "datacenter it is bridged from; null = local"},
            "started_at": _NUM,
            "last_seen": {**_NUM, "description": "epoch seconds, master clock"},
            "last_heartbeat": {**_NUM, "description": "epoch seconds, agent clock"},
            "heartbeat_interval": {"type": "number"},
            "running": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Submit": {
        "type": "object",
        "description": "The design document's task JSON. Give exactly one of script (base64), script_text "
        "and job (a saved job; its defaults fill the fields not given, targets included).",
        "additionalProperties": False,
        "oneOf": [{**b, "required": [*b["required"], "targets"]} if b["required"] != ["job"] else b
                  for b in _exactly_one("script", "script_text", "job")],  # targets: a job may have them
        "properties": {
            "targets": {"type": "array", "items": {"type": "string"},
                        "description": "selectors (agent ids, labels); a selector no agent matches is a 400"},
            "script": {"type": ["string", "null"], "contentEncoding": "base64"},
            "script_text": {"type": ["string", "null"]},
            "job": {"type": ["string", "null"], "description": "run this saved job instead of a script"},
            "version": {"type": ["integer", "null"], "minimum": 1, "maximum": _MAX_VERSION,
                        "description": "with job: its version"},
            "request_id": {"type": ["string", "null"]},
            "name": {"type": "string"},
            "timeout": {"type": "number", "minimum": 0, "description": "seconds, 0 = no limit"},
            "parallel": {"oneOf": [{"type": "integer", "minimum": 1},
                                   {"type": "string", "pattern": "^\\d+(\\.\\d+)?%$"}, {"type": "null"}],
                         "description": "targets at once; null/absent = 1, but a task over the master's "
                         "unplanned_target_limit then needs a plan"},
            "plan": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "items": _ref("PlanStep")},
                               {"type": "null"}],
                     "description": "a rollout plan (docs/rollout.md, Plans): text like '1,pause,5,20%,rest' "
                     "('pause 10m' for a timed pause) or a list of steps"},
            "fail_rate": {"oneOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}],
                          "description": "-1/null = none, a fraction 0..1, or 'N%'"},
            "fail_count": {"type": "integer", "minimum": -1, "description": "-1 = no limit"},
            "on_abort": {"type": "string", "enum": ["kill", "drain"]},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "cwd": {"type": ["string", "null"]},
            "output_cap": {"type": ["integer", "null"]},
            "delivery_timeout": _NUM,
            "stream": {"type": "boolean", "description": "targets send their output live while it runs (default)"},
        },
    },  # fmt: skip
    "PlanStep": {
        "type": "object",
        "description": "a batch ({batch: N | 'N%' | 'rest', parallel, fail_count, fail_rate, min_finished, ignore}) "
        "or a pause ({pause: true} until approved, or seconds, or a duration like '10m')",
        "properties": {
            "batch": {"type": ["integer", "string"]},
            "parallel": {"type": ["integer", "string"], "description": "default: the task's window; 'N%' of the batch"},
            "fail_count": {"type": "integer", "minimum": -1, "description": "over this step's targets; -1 = none"},
            "fail_rate": {"type": ["number", "string"], "description": "over this step's finished targets"},
            "min_finished": {"type": "integer", "minimum": 0, "description": "finished targets before the rate is judged"},
            "ignore": {"type": "array", "items": {"type": "string", "enum": ["FAILED", "TIMEOUT", "LOST",
                       "UNREACHABLE", "INTERRUPTED", "REJECTED"]},
                       "description": "failure states that do not count toward this step's limits"},
            "pause": {"type": ["boolean", "number", "string"]},
        },
    },
    "PlanStage": {
        "type": "object",
        "description": "a plan step resolved against the task's targets",
        "properties": {
            "step": {"type": "integer", "description": "the step's number as written (an implicit rest: one past the last)"},
            "kind": {"type": "string", "enum": ["batch", "pause"]},
            "targets": {"type": "integer"},
            "parallel": {"type": ["integer", "null"]},
            "pause": {**_NUM, "description": "a timed pause's seconds; null: until approved"},
            "current": {"type": "boolean"},
        },
    },
    "Who": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"by": {**_AUTHOR, "description": "who; the master records http:<client address> without it"}},
    },
    "Target": {
        "type": "object",
        "properties": {
            "agent_id": {"type": "string"},
            "hostname": {"type": ["string", "null"]},
            "state": {"type": "string", "enum": TARGET_STATES},
            "acked": {"type": "boolean"},
            "code": {"type": ["integer", "null"], "description": "exit status; null when it never ran"},
            "signal": {"type": ["integer", "null"]},
            "reason": {"type": "string"},
            "agent_state": {
                "type": ["string", "null"],
                "description": "the final state the agent reported; differs from state when a verdict "
                "(UNREACHABLE, LOST) came before a late result",
            },
            "error": {
                "type": ["string", "null"],
                "description": "why the agent could not start or finish the script (bad cwd, missing "
                "interpreter, exec failure), as it reported it; null when it said nothing",
            },
            "revised_at": {
                **_NUM,
                "description": "when the agent's late report replaced a provisional verdict (revised_from)",
            },
            "revised_from": {
                "type": ["string", "null"],
                "enum": ["UNREACHABLE", "LOST", None],
                "description": "the provisional verdict the agent's late report replaced",
            },
            "kill_pending": {
                "type": "boolean",
                "description": "KILL_PENDING: a kill was asked for and the agent has not confirmed it yet; "
                "the master re-sends it (with back-off while the agent is unreachable, up to lost_max)",
            },
            "dispatched_at": _NUM,
            "started_at": _NUM,
            "finished_at": _NUM,
            "duration": _NUM,
            "output": {"type": "string", "description": "stdout, encoded as output_encoding says"},
            "output_encoding": {"type": "string", "enum": ["utf-8", "base64"]},
            "output_bytes": {"type": "integer"},
            "output_truncated": {"type": "boolean", "description": "the agent kept only head and tail"},
            "output_clipped": {"type": "boolean", "description": "cut to max_output here"},
            "stderr": {"type": "string"},
            "stderr_encoding": {"type": "string", "enum": ["utf-8", "base64"]},
            "stderr_bytes": {"type": "integer"},
            "stderr_truncated": {"type": "boolean"},
            "stderr_clipped": {"type": "boolean"},
        },
    },
    "Task": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "state": {"type": "string", "enum": TASK_STATES},
            "reason": {"type": "string"},
            "created_at": {"type": "number"},
            "finished_at": _NUM,
            "revised_at": {
                **_NUM,
                "description": "when a late report from an agent last revised this task's verdict; null if never",
            },
            "script": {"type": "string", "description": "on GET /api/v1/tasks/{task_id} only"},
            "script_encoding": {"type": "string", "enum": ["utf-8", "base64"]},
            "targets_spec": {"type": "array", "items": {"type": "string"}},
            "timeout": {"type": "number"},
            "parallel": {"type": ["integer", "string"]},
            "fail_rate": {"type": ["number", "string", "null"]},
            "fail_count": {"type": "integer"},
            "on_abort": {"type": "string"},
            "env": {"type": "object"},
            "cwd": {"type": ["string", "null"]},
            "output_cap": {"type": ["integer", "null"]},
            "delivery_timeout": {"type": "number"},
            "stream": {"type": "boolean", "description": "targets send their output live while it runs"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "target_count": {"type": "integer"},
            "plan": {"type": ["array", "null"], "items": _ref("PlanStep"), "description": "its plan; null = none"},
            "plan_step": {"type": ["integer", "null"], "description": "the plan's current step"},
            "paused_at": {**_NUM, "description": "since when the plan waits at a pause (state PAUSED)"},
            "plan_stages": {"type": "array", "items": _ref("PlanStage"), "description": "with a plan"},
            "approvals": {
                "type": "array", "description": "GET one task with a plan: who approved its pauses, when, at which step",
                "items": {"type": "object", "properties": {"by": {"type": ["string", "null"]}, "at": {"type": "number"},
                                                           "step": {"type": ["integer", "null"]}}},
            },
            "delivery": {
                "type": "object",
                "description": "GET one running task: whether flow control holds its copies back, and why "
                "(docs/rollout.md, \"Flow control\")",
                "properties": {
                    "throttled": {"type": "boolean", "description": "copies wait because the window is full"},
                    "queued": {"type": "integer", "description": "this task's copies in the master's queue"},
                    "in_flight": {"type": "integer", "description": "... published, not yet acknowledged by the broker"},
                    "waiting_for_agent": {"type": "integer", "description": "copies held until their agent is online"},
                    "master_queued": {"type": "integer", "description": "copies in the master's queue, all tasks"},
                    "master_in_flight": {"type": "integer", "description": "un-acknowledged copies, all tasks"},
                    "window": {"type": "integer", "description": "dispatch_window: copies in flight at most"},
                    "reason": {"type": "string", "description": "in words; empty when nothing holds it back"},
                },
            },
            "aborted_by": {"type": "object", "description": "GET one task a person aborted: who and when",
                           "properties": {"by": {"type": ["string", "null"]}, "at": {"type": "number"}}},
            "targets": {
                "type": "object",
                "additionalProperties": _ref("Target"),
                "description": "agent id -> target; present on GET /api/v1/tasks/{task_id}",
            },
            "job": {"type": ["string", "null"], "description": "the job it ran (GET one task); null = a script"},
            "job_version": {"type": ["integer", "null"]},
            "script_sha256": {"type": ["string", "null"], "description": "sha256 of the script sent to the agents"},
            "rerun_of": {"type": ["string", "null"], "description": "the task this one re-runs"},
            "submitted_by": {"type": ["string", "null"]},
            "reported_sha256": {
                "type": "object",
                "additionalProperties": {"type": ["string", "null"]},
                "description": "agent id -> sha256 of the script the agent reported executing",
            },
        },
    },
    "JobSummary": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "latest": {"type": "integer"},
            "default_version": {"type": "integer", "description": "the version a run takes when none is named"},
            "pinned": {"type": "boolean", "description": "the default is pinned (else it is the latest)"},
            "updated_at": {"type": "number"},
            "author": {"type": "string", "description": "who saved the latest version"},
        },
    },
    "JobVersion": {
        "type": "object",
        "description": "An immutable version of a job",
        "properties": {
            "job": {"type": "string"},
            "version": {"type": "integer"},
            "description": {"type": "string"},
            "defaults": {"type": "object", "description": "submit fields a run takes unless it gives them"},
            "content_sha256": {"type": "string", "description": "sha256 of the canonical content"},
            "script_sha256": {"type": "string"},
            "author": {"type": "string"},
            "message": {"type": "string"},
            "created_at": {"type": "number"},
            "script": {"type": "string", "description": "on GET .../versions/{version} only"},
            "script_encoding": {"type": "string", "enum": ["utf-8", "base64"]},
            "created": {"type": "boolean", "description": "on a save: false when the content equals the latest"},
        },
    },
    "JobSave": {
        "type": "object",
        "description": "Give exactly one of script (base64) and script_text.",
        "additionalProperties": False,
        "oneOf": _exactly_one("script", "script_text"),
        "properties": {
            "script": {"type": ["string", "null"], "contentEncoding": "base64"},
            "script_text": {"type": ["string", "null"]},
            "description": {"type": "string"},
            "defaults": {"type": ["object", "null"], "description": "any of: " + ", ".join(
                ("targets", "name", "timeout", "parallel", "fail_rate", "fail_count", "on_abort", "env", "cwd",
                 "output_cap", "delivery_timeout", "plan"))},
            "author": _AUTHOR,
            "message": {"type": "string"},
        },
    },  # fmt: skip
    "JobRun": {
        "type": "object",
        "description": "version (default: the job's default version), request_id, author, and any Submit field "
        "but the script's: those override the version's defaults",
        "properties": {
            "version": {"type": ["integer", "string", "null"], "minimum": 1, "maximum": _MAX_VERSION,
                        "pattern": _VERSION_QUERY, "description": "a number, latest or default"},
            "request_id": {"type": ["string", "null"]},
            "author": _AUTHOR,
            "targets": {"type": "array", "items": {"type": "string"}},
        },
    },
}

_TASK_ID = _path_param("task_id", "task id")
_BY_ID = {"task_id": "$response.body#/id"}
#: From a new task (201) to the routes that take its id.
_TASK_LINKS = {
    "GetTask": {"operationId": "getTask", "parameters": _BY_ID},
    "GetOutput": {"operationId": "getOutput", "parameters": _BY_ID},
    "KillTask": {"operationId": "killTask", "parameters": _BY_ID},
    "ApproveTask": {"operationId": "approveTask", "parameters": _BY_ID},
    "AbortTask": {"operationId": "abortTask", "parameters": _BY_ID},
    "RerunTask": {"operationId": "rerunTask", "parameters": _BY_ID},
}
_JOB = {**_path_param("name", "job name"), "example": "hello"}
_VERSION = {**_path_param("version", "version number, 'latest' or 'default'"),
            "schema": {"type": "string", "pattern": _VERSION_PATTERN}}
_AGENT_ID = _path_param("agent_id", "agent id")

PATHS: dict[str, Any] = {
    "/task/targets": {
        "get": {
            "summary": "Every registered agent id (the design document's route)",
            "responses": {
                "200": _json({"type": "array", "items": {"type": "string"}}, "agent ids"),
                "401": _UNAUTH,
            },
        }
    },
    "/task": {
        "post": {
            "summary": "Submit a task (the design document's route); answers the task id as text",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Submit")}}},
            "responses": {
                "201": {"description": "the new task id", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "400": _err("bad JSON, bad limits, unknown targets"),
                "401": _UNAUTH,
                "409": _err("request_id already used for a different request"),
                "413": _err("body too large"),
            },
        }
    },
    "/api/v1/agents": {
        "get": {
            "summary": "The fleet",
            "parameters": [
                _query("online", QUERY_BOOL, "only online (true) or offline (false) agents"),
                _query("label", {"type": "string"}, "key=value"),
                _query("hostname", {"type": "string"}, "hostname or glob"),
            ],
            "responses": {
                "200": _json({"type": "object", "properties": {"agents": {"type": "array", "items": _ref("Agent")}}},
                             "agents"),
                "400": _err("bad filter"),
                "401": _UNAUTH,
            },
        }
    },  # fmt: skip
    "/api/v1/agents/{agent_id}": {
        "get": {
            "summary": "One agent",
            "parameters": [_AGENT_ID],
            "responses": {"200": _json(_ref("Agent"), "the agent"), "401": _UNAUTH, "404": _err("unknown agent")},
        }
    },
    "/api/v1/targets/resolve": {
        "post": {
            "summary": "Preview which agents selectors match now (what a task would run on); nothing runs",
            "operationId": "resolveTargets",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"type": "object", "additionalProperties": False, "required": ["targets"], "properties": {
                    "targets": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": "\\S"},
                                "description": "selectors, as a task's targets"}}},
                "example": {"targets": ["role=web"]}}}},
            "responses": {
                "200": _json({"type": "object", "required": ["targets", "count", "agents"], "properties": {
                    "targets": {"type": "array", "items": {"type": "string"}},
                    "count": {"type": "integer", "minimum": 1},
                    "agents": {"type": "array", "items": _ref("Agent"), "description": "in a task's order"}}},
                    "the matching agents"),
                "400": _err("bad JSON, or a selector that is malformed or matches no agent"),
                "401": _UNAUTH,
                "413": _err("body too large"),
            },
        }
    },
    "/api/v1/tasks": {
        "post": {
            "summary": "Submit a task",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("Submit"), "example": {"targets": ["all"], "script_text": "echo hello"}}}},
            "responses": {
                "201": {**_json(_ref("Task"), "the new task (Location: its URL)"), "links": _TASK_LINKS},
                "400": _err("bad JSON, bad limits, unknown targets"),
                "401": _UNAUTH,
                "409": _err("request_id already used for a different request"),
                "413": _err("body too large"),
            },
        },
        "get": {
            "summary": "Tasks, newest first, paged",
            "parameters": [
                _query("state", {"type": "string", "enum": [*TASK_STATES, *(s.lower() for s in TASK_STATES)]},
                       "only tasks in this state (upper or lower case)"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "page size"),
                _query("offset", {"type": "integer", "minimum": 0, "default": 0}, "tasks to skip"),
                _query("id_prefix", {"type": "string"}, "only tasks whose id starts with this (the CLI's short ids)"),
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "tasks": {"type": "array", "items": _ref("Task")},
                            "limit": {"type": "integer"},
                            "offset": {"type": "integer"},
                            "next_offset": {"type": ["integer", "null"]},
                        },
                    },
                    "a page of tasks (without targets)",
                ),
                "400": _err("bad state, limit or offset"),
                "401": _UNAUTH,
            },
        },
    },
    "/api/v1/tasks/{task_id}": {
        "get": {
            "summary": "One task with its limits, counts and targets (state, exit code, timings, output)",
            "operationId": "getTask",
            "parameters": [
                _TASK_ID,
                _query("outputs", QUERY_BOOL,
                       "include the targets' stdout and stderr (default: no, unless max_output > 0; a poll "
                       "of counts and states reads no output; one target's is at .../output)"),
                _query("targets", QUERY_BOOL,
                       "include the targets (default: yes); targets=0 gives the task and its counts only"),
                _query("max_output", {"type": "integer", "minimum": 0},
                       "with outputs: keep only the last N bytes of each target's stdout and stderr (default: all)"),
            ],
            "responses": {"200": _json(_ref("Task"), "the task"), "401": _UNAUTH, "404": _err("unknown task")},
        }
    },
    "/api/v1/tasks/{task_id}/targets/{agent_id}/output": {
        "get": {
            "summary": "A target's output as raw bytes",
            "operationId": "getOutput",
            "parameters": [
                _TASK_ID,
                _AGENT_ID,
                _query("stream", {"type": "string", "enum": ["stdout", "stderr"], "default": "stdout"}, "which stream"),
                _query("follow", QUERY_BOOL,
                       "tail -f: a chunked answer that carries the output as it is written and ends when the "
                       "target does. Bytes never sent live, or lost on the way, show as a line "
                       "'\\n[mschedule: N bytes skipped]\\n'; once the target has ended, those the stored result "
                       "holds follow the rest, each part between '\\n[mschedule: N bytes skipped at byte X, from "
                       "the result:]\\n' and '\\n[mschedule: end of the bytes from byte X]\\n'"),
                _query("offset", {"type": "integer", "minimum": 0, "maximum": 2**62},
                       "with follow=1: the bytes of the stream the follower already has (a skipped line counts "
                       "as the N bytes it stands for; a filled part counts nothing): the answer starts at that "
                       "byte, so a follower that reconnects gets the rest without repeats. Without follow=1: 400"),
                _query("holes", {"type": "string", "maxLength": 4200, "pattern": "^([0-9]+-[0-9]+(,[0-9]+-[0-9]+)*)?$"},
                       "with follow=1 and offset: the ranges START-END (end excluded; in order, at most 100) an "
                       "earlier answer showed as skipped; once the target has ended they are filled from the "
                       "result as this answer's own are. Without follow=1: 400"),
            ],
            "responses": {
                "200": {
                    "description": "raw bytes; X-Mschedule-State, X-Mschedule-Exit-Code, X-Mschedule-Truncated, "
                    "X-Mschedule-Total-Bytes headers (with follow=1: X-Mschedule-Follow and X-Mschedule-Offset, "
                    "where the answer starts, and none of those). "
                    "A target still running answers what it has written so far (its live output), with "
                    "X-Mschedule-Live: true",
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                },
                "400": _err("bad stream, offset or holes, or offset or holes without follow=1"),
                "401": _UNAUTH,
                "404": _err("unknown task or target"),
            },
        }
    },
    "/api/v1/tasks/{task_id}/kill": {
        "post": {
            "summary": "Kill the task: running targets are killed, waiting ones cancelled (no body)",
            "operationId": "killTask",
            "parameters": [_TASK_ID],
            "responses": {"202": _json(_ref("Task"), "kill requested"), "401": _UNAUTH, "404": _err("unknown task"),
                          "409": _err("the task had already ended: nothing to kill")},
        }
    },
    "/api/v1/tasks/{task_id}/approve": {
        "post": {
            "summary": "Let a paused plan go on (a timed pause ends early); recorded with who and when",
            "operationId": "approveTask",
            "parameters": [_TASK_ID],
            "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("Who")}}},
            "responses": {
                "200": _json(_ref("Task"), "approved: the plan goes on"),
                "401": _UNAUTH,
                "404": _err("unknown task"),
                "409": _err("the task is not paused"),
            },
        }
    },
    "/api/v1/tasks/{task_id}/abort": {
        "post": {
            "summary": "Stop the task's rollout as a tripped limit would (on_abort: kill or drain the running "
            "targets); it ends FAILED, 'aborted by ...'",
            "operationId": "abortTask",
            "parameters": [_TASK_ID],
            "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("Who")}}},
            "responses": {
                "202": _json(_ref("Task"), "abort requested"),
                "401": _UNAUTH,
                "404": _err("unknown task"),
                "409": _err("the task has ended, or was killed or aborted already"),
            },
        }
    },
    "/api/v1/events": {
        "get": {
            "summary": "Server-sent events (task, target, agent changes; hello; resync)",
            "parameters": [
                _query("task", {"type": "string"}, "only this task's events"),
                {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "the id of the last event received (a reconnect): the events since come first, "
                                "or resync when they are no longer all known"},
            ],
            "responses": {
                "200": {"description": "an event stream: hello first, then the events missed since Last-Event-ID, "
                        "then for an ended task its final state (a task event, data.final true), then task, "
                        "target, agent ... events as they happen, each with an id; resync when events were "
                        "dropped (re-read everything)",
                        "content": {"text/event-stream": {"schema": _ref("ServerSentEvent")}}},
                "401": _UNAUTH,
                "404": _err("unknown task"),
            },
        }
    },
    "/api/v1/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
        }
    },
    "/": {
        "get": {
            "summary": "The web page",
            "security": [],
            "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
        }
    },
    # ---------------------------------------------------------------- jobs (docs/jobs.md)
    "/api/v1/jobs": {
        "get": {
            "summary": "Every job with its latest and default version",
            "responses": {"200": _json({"type": "object", "properties": {
                              "jobs": {"type": "array", "items": _ref("JobSummary")}}}, "jobs"),
                          "401": _UNAUTH},
        }
    },
    "/api/v1/jobs/{name}": {
        "get": {
            "summary": "A job and its versions, newest first (without scripts)",
            "parameters": [_JOB],
            "responses": {"200": _json({**_ref("JobSummary"), "description": "plus versions: [JobVersion]"}, "the job"),
                          "401": _UNAUTH, "404": _err("unknown job")},
        }
    },
    "/api/v1/jobs/{name}/versions": {
        "post": {
            "summary": "Save a version (creates the job); content equal to the latest version creates nothing",
            "parameters": [_JOB],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("JobSave")}}},
            "responses": {"201": _json(_ref("JobVersion"), "a new version"),
                          "200": _json(_ref("JobVersion"), "the latest version: the content is unchanged"),
                          "400": _err("bad name, script or defaults"), "401": _UNAUTH, "413": _err("body too large")},
        }
    },
    "/api/v1/jobs/{name}/versions/{version}": {
        "get": {
            "summary": "One version with its script",
            "parameters": [_JOB, _VERSION],
            "responses": {"200": _json(_ref("JobVersion"), "the version"), "400": _err("bad version"),
                          "401": _UNAUTH, "404": _err("unknown job or version")},
        }
    },
    "/api/v1/jobs/{name}/versions/{version}/footprint": {
        "get": {
            "summary": "On which agents this version's last run succeeded or failed",
            "parameters": [_JOB, _VERSION],
            "responses": {"200": _json({"type": "object", "properties": {
                "agents": {"type": "object", "description": "agent id -> {task_id, state, code, reported_sha256}"},
                "succeeded": {"type": "array", "items": {"type": "string"}},
                "failed": {"type": "array", "items": {"type": "string"}}}}, "the footprint"),
                "400": _err("bad version"), "401": _UNAUTH, "404": _err("unknown job or version")},
        }
    },
    "/api/v1/jobs/{name}/diff": {
        "get": {
            "summary": "A unified diff between two versions (description, defaults, script)",
            "parameters": [_JOB, _query("from", {"type": "string", "pattern": _VERSION_QUERY},
                                                "version (default: the one before to)"),
                           _query("to", {"type": "string", "pattern": _VERSION_QUERY},
                                  "version (default: the latest)")],
            "responses": {"200": _json({"type": "object", "properties": {"from": {"type": "integer"},
                          "to": {"type": "integer"}, "diff": {"type": "string"}}}, "the diff"),
                          "400": _err("bad version"), "401": _UNAUTH, "404": _err("unknown job or version")},
        }
    },
    "/api/v1/jobs/{name}/default": {
        "post": {
            "summary": "Pin the default version ({\"version\": N}), or follow the latest again ({\"version\": null})",
            "parameters": [_JOB],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"version": {"type": ["integer", "null"], "minimum": 1,
                                                         "maximum": _MAX_VERSION}}}}}},
            "responses": {"200": _json(_ref("JobSummary"), "the job"), "400": _err("bad version"),
                          "401": _UNAUTH, "404": _err("unknown job or version")},
        }
    },
    "/api/v1/jobs/{name}/run": {
        "post": {
            "summary": "Run a version: a task with the version's script and defaults, overridden by the body",
            "parameters": [_JOB],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("JobRun")}}},
            "responses": {"201": _json(_ref("Task"), "the new task"), "400": _err("bad override, no targets"),
                          "401": _UNAUTH, "404": _err("unknown job or version")},
        }
    },
    "/api/v1/jobs/{name}/runs": {
        "get": {
            "summary": "The job's tasks, newest first: version, task, when, who, state, target counts",
            "parameters": [_JOB, _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "rows")],
            "responses": {"200": _json({"type": "object", "properties": {"runs": {"type": "array",
                          "items": {"type": "object"}}}}, "runs"), "401": _UNAUTH, "404": _err("unknown job")},
        }
    },
    "/api/v1/agents/{agent_id}/history": {
        "get": {
            "summary": "What ran on an agent, newest first: task, job version, sha256 sent and reported, result",
            "parameters": [_AGENT_ID, _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "rows")],
            "responses": {"200": _json({"type": "object", "properties": {"history": {"type": "array",
                          "items": {"type": "object"}}}}, "history"), "401": _UNAUTH, "404": _err("unknown agent")},
        }
    },
    "/api/v1/tasks/{task_id}/rerun": {
        "post": {
            "summary": "Re-run a task as it was, or ({\"failed\": true}) only its failed / not-run targets",
            "operationId": "rerunTask",
            "parameters": [_TASK_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"failed": {"type": "boolean"}, "author": _AUTHOR}}}}},
            "responses": {"201": _json(_ref("Task"), "the new task (rerun_of names the first)"),
                          "400": _err("nothing to re-run, task not ended"), "401": _UNAUTH,
                          "404": _err("unknown task")},
        }
    },
    "/healthz": {
        "get": {
            "summary": "Liveness: the master's process and event loop answer",
            "security": [],
            "responses": {"200": _json({"type": "object"}, '{"status": "ok"}')},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: broker connected, database writable, inbox caught up",
            "security": [],
            "responses": {
                "200": _json({"type": "object"}, '{"ready": true, "checks": {"broker": "ok", ...}}'),
                "503": _json({"type": "object"}, "not ready: each failing check says why"),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text exposition format)",
            "responses": {
                "200": {"description": "metrics", "content": {"text/plain": {}}},
                "401": _UNAUTH,
                "404": _err("this master serves no metrics"),
            },
        }
    },
}  # fmt: skip


# ---------------------------------------------------------------- schedules (docs/schedules.md)
_OUTCOMES = ["fired", "caught-up", "missed", "skipped-overlap", "queued", "not-started"]
SCHEMAS.update({
    "Schedule": {
        "type": "object",
        "description": "A job at a version on a cron expression in a time zone, with its policies",
        "properties": {
            "name": {"type": "string"},
            "job": {"type": "string"},
            "version": {"type": ["integer", "string"], "description": "a pinned version, or @default (at fire time)"},
            "cron": {"type": "string", "description": "5 fields, or @hourly @daily @midnight @weekly @monthly @yearly"},
            "tz": {"type": "string", "description": "IANA time zone (default UTC)"},
            "overlap": {"type": "string", "description": "skip, queue(N) or allow(N)"},
            "misfire": {"type": "string", "description": "skip, run_once or catch_up(N, DEADLINE)"},
            "paused": {"type": "boolean"},
            "overrides": {"type": "object", "description": "run settings over the job version's defaults"},
            "since": {"type": "number", "description": "created or last resumed at"},
            "created_at": {"type": "number"},
            "created_by": {"type": "string"},
            "missed_earlier": {"type": "integer", "description": "missed fire times counted, not recorded one by one"},
            "next_fire": {"type": ["integer", "null"], "description": "the next fire time (null while paused)"},
            "next": {"type": "array", "items": {"type": "integer"}, "description": "GET one: the next 5 fire times"},
            "runs": {"type": "array", "items": _ref("ScheduleRun"), "description": "GET one: the last 20 records"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"},
                       "description": "GET one: outcome -> how many"},
        },
    },
    "ScheduleCreate": {
        "type": "object",
        "required": ["name", "job", "cron"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "job": {"type": "string", "description": "JOB or JOB@V"},
            "version": {"type": ["integer", "string", "null"], "description": "or in job as JOB@V"},
            "cron": {"type": "string"},
            "tz": {"type": "string"},
            "overlap": {"type": "string"},
            "misfire": {"type": "string"},
            "paused": {"type": "boolean"},
            "overrides": {"type": "object"},
            "author": _AUTHOR,
        },
    },
    "ScheduleRun": {
        "type": "object",
        "description": "A decided fire time and what happened to it",
        "properties": {
            "fire_time": {"type": "integer", "description": "epoch seconds"},
            "outcome": {"type": "string", "enum": _OUTCOMES},
            "recorded_at": {"type": "number"},
            "task_id": {"type": ["string", "null"]},
            "error": {"type": ["string", "null"], "description": "not-started: why no run could be created"},
            "task_state": {"type": ["string", "null"], "enum": [*TASK_STATES, None]},
            "finished_at": _NUM,
        },
    },
})  # fmt: skip

_SCHEDULE = {**_path_param("name", "schedule name"), "example": "hello-nightly"}
_ONE_SCHEDULE = _json(_ref("Schedule"), "the schedule")
_NO_SCHEDULE = _err("unknown schedule")
PATHS.update({
    "/api/v1/schedules": {
        "get": {
            "summary": "Every schedule, by name",
            "responses": {"200": _json({"type": "object", "properties": {"schedules": {"type": "array",
                          "items": _ref("Schedule")}}}, "schedules"), "401": _UNAUTH},
        },
        "post": {
            "summary": "Add a schedule (its job, and a pinned version, must exist)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ScheduleCreate")}}},
            "responses": {"201": _ONE_SCHEDULE, "400": _err("bad field (named), or the name is taken"),
                          "401": _UNAUTH, "404": _err("unknown job or version")},
        },
    },
    "/api/v1/schedules/{name}": {
        "get": {
            "summary": "A schedule, its next 5 fire times, its last 20 records and the count of each outcome",
            "parameters": [_SCHEDULE],
            "responses": {"200": _ONE_SCHEDULE, "401": _UNAUTH, "404": _NO_SCHEDULE},
        },
        "delete": {
            "summary": "Remove a schedule and its records (its tasks stay)",
            "parameters": [_SCHEDULE],
            "responses": {"200": _json({"type": "object"}, "removed"), "401": _UNAUTH, "404": _NO_SCHEDULE},
        },
    },
    "/api/v1/schedules/{name}/pause": {
        "post": {
            "summary": "Pause: no fire time is planned or recorded until resumed",
            "parameters": [_SCHEDULE],
            "responses": {"200": _ONE_SCHEDULE, "401": _UNAUTH, "404": _NO_SCHEDULE},
        }
    },
    "/api/v1/schedules/{name}/resume": {
        "post": {
            "summary": "Resume from now: the fire times during the pause are neither run nor recorded",
            "parameters": [_SCHEDULE],
            "responses": {"200": _ONE_SCHEDULE, "401": _UNAUTH, "404": _NO_SCHEDULE},
        }
    },
    "/api/v1/schedules/{name}/next": {
        "get": {
            "summary": "The next n fire times (epoch seconds), paused or not",
            "parameters": [_SCHEDULE, _query("n", {"type": "integer", "minimum": 1, "maximum": 1000}, "how many")],
            "responses": {"200": _json({"type": "object", "properties": {"next": {"type": "array",
                          "items": {"type": "integer"}}}}, "fire times"), "400": _err("bad n"), "401": _UNAUTH,
                          "404": _NO_SCHEDULE},
        }
    },
    "/api/v1/schedules/{name}/runs": {
        "get": {
            "summary": "The schedule's records, newest fire time first, with their tasks' states",
            "parameters": [_SCHEDULE, _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "rows")],
            "responses": {"200": _json({"type": "object", "properties": {"runs": {"type": "array",
                          "items": _ref("ScheduleRun")}}}, "records"), "401": _UNAUTH, "404": _NO_SCHEDULE},
        }
    },
})  # fmt: skip

_AUDIT_ACTIONS = ["submit", "kill", "approval", "outcome", "job_version", "job_default", "schedule_add",
                  "schedule_pause", "schedule_resume", "schedule_remove", "signing_key"]  # audit.ACTIONS
SCHEMAS["AuditRecord"] = {
    "type": "object",
    "description": "One record of the append-only, hash-chained audit trail (docs/security.md)",
    "properties": {
        "seq": {"type": "integer"},
        "at": {"type": "number", "description": "epoch seconds"},
        "actor": {"type": "string", "description": "the API token's name, mqtt, schedule:NAME or master"},
        "action": {"type": "string", "enum": _AUDIT_ACTIONS},
        "task_id": {"type": ["string", "null"]},
        "detail": {"type": "object", "description": "selector and resolved count, job version, script sha256, outcome"},
        "prev": {"type": "string", "description": "the previous record's hash"},
        "hash": {"type": "string", "description": "sha256 of this record's fields and prev"},
    },
}
PATHS.update({
    "/api/v1/audit": {
        "get": {
            "summary": "Audit records, oldest first, after a sequence number",
            "parameters": [
                _query("after", {"type": "integer", "minimum": 0}, "only records with a higher seq"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "rows (default 100)"),
                _query("task_id", {"type": "string"}, "only this task's records"),
                _query("action", {"type": "string", "enum": _AUDIT_ACTIONS}, "only this action"),
            ],
            "responses": {"200": _json({"type": "object", "properties": {"records": {"type": "array",
                          "items": _ref("AuditRecord")}}}, "records"), "401": _UNAUTH},
        }
    },
    "/api/v1/audit/verify": {
        "get": {
            "summary": "Walk the hash chain: ok, or which records were edited or deleted",
            "responses": {"200": _json({"type": "object", "properties": {
                "ok": {"type": "boolean"}, "count": {"type": "integer"}, "head_seq": {"type": "integer"},
                "head_hash": {"type": "string"}, "problems": {"type": "array", "items": {"type": "string"}}}},
                "the verdict"), "401": _UNAUTH},
        }
    },
    "/api/v1/jobs/{name}/versions/{version}/approvals": {
        "post": {
            "summary": "Keep an operator's offline approval of this version (sent with its tasks' signatures)",
            "parameters": [_JOB, {**_path_param("version", "version number"), "schema": {"type": "string",
                                                                                         "pattern": "^[1-9][0-9]{0,8}$"}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["public", "statement", "sig"], "additionalProperties": False,
                "properties": {"public": {"type": "string", "description": "base64 Ed25519 public key"},
                               "statement": {"type": "string", "description": "the signed approval, JSON text"},
                               "sig": {"type": "string", "description": "base64 signature of statement"}}}}}},
            "responses": {"201": _json({"type": "object", "properties": {
                "job": {"type": "string"}, "version": {"type": "integer"}, "kid": {"type": "string"},
                "script_sha256": {"type": "string"}}}, "kept"), "400": _err("not an approval of this version"),
                "401": _UNAUTH, "404": _err("unknown job or version")},
        }
    },
    "/api/v1/whoami": {
        "get": {
            "summary": "The caller's token name and role, and what the role may do",
            "responses": {"200": _json({"type": "object", "properties": {
                "name": {"type": "string"}, "role": {"type": "string", "enum": ["viewer", "operator", "admin"]},
                "may": {"type": "object", "properties": {"read": {"type": "boolean"}, "run": {"type": "boolean"},
                                                         "admin": {"type": "boolean"}}}}}, "who"), "401": _UNAUTH},
        }
    },
})  # fmt: skip


_EVENT_DATA = {
    "oneOf": [
        {"type": "object", "description": "hello", "required": ["task_id"], "properties": {
            "task_id": {"type": ["string", "null"], "description": "the task filter, null = every task"}}},
        {"type": "object", "description": "resync: events were dropped", "maxProperties": 0},
        {"type": "object", "description": "a change", "required": ["kind", "task_id", "ts", "data"], "properties": {
            "kind": {"type": "string"}, "task_id": {"type": ["string", "null"]}, "ts": {"type": "number"},
            "data": {"type": "object", "description": "what changed (state, counts, agent_id ...)"}}},
    ]
}
SCHEMAS["ServerSentEvent"] = {
    "type": "object",
    "description": "One event of the stream, as an event-stream parser reads it; data is JSON text",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "description": "hello, resync, or the change's kind (task, target, agent ...)"},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _EVENT_DATA},
        "retry": {"type": "integer", "description": "on hello: reconnect after this many milliseconds"},
        "id": {"type": "string"},
    },
    "example": {"event": "task", "data": '{"kind":"task","task_id":"t1","ts":1.5,"data":{"state":"RUNNING"}}'},
}  # fmt: skip

_FORBIDDEN = _err("without a token: a Host that is not loopback, or a cross-origin browser request")
_ROLE_FORBIDDEN = _err("the token's role does not allow this operation (viewer < operator < admin)")
_NOT_JSON = _err("the body is not Content-Type: application/json")


_BAD_INPUT = _err("a parameter or the body is not what this operation takes (field names it)")
_AUTH_MODES = (
    "Security: a master started with a token (--token, MSCHEDULE_TOKEN) needs `Authorization: Bearer <token>` on "
    "every operation but the page, this document and the probes, and answers 401 without it; a master without "
    "a token listens on loopback only, needs no Authorization, and answers 403 to a Host that is not loopback "
    "or a cross-origin Origin (no 401). This document is served for the master's own mode: it has the bearer "
    "requirement when the master has a token, none when not. Each token has a role: viewer reads (GET), "
    "operator also submits, kills and re-runs tasks and runs jobs, admin also changes jobs and schedules; "
    "a token whose role is too low gets 403."
)


# ---------------------------------------------------------------- examples and links
# Example bodies (a client's first request; schemathesis's examples phase sends them, so
# its later phases find a job, a schedule and tasks to work on) and the links from what a
# request creates to the routes that take its name or id.
_NAME = {"name": "$request.path.name"}
_SAVED = {"name": "$request.path.name", "version": "$response.body#/version"}
_SCHEDULED = {"name": "$response.body#/name"}
_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/api/v1/jobs/{name}/versions"): {
        "example": {"script_text": "echo hello", "description": "says hello"},
        "links": {"GetJob": ("getJob", _NAME), "GetVersion": ("getVersion", _SAVED), "RunJob": ("runJob", _NAME),
                  "Footprint": ("getFootprint", _SAVED), "JobRuns": ("getJobRuns", _NAME),
                  "Diff": ("getDiff", _NAME), "SetDefault": ("setDefault", _NAME)},
    },
    ("get", "/api/v1/jobs/{name}"): {"operationId": "getJob"},
    ("get", "/api/v1/jobs/{name}/versions/{version}"): {"operationId": "getVersion"},
    ("get", "/api/v1/jobs/{name}/versions/{version}/footprint"): {"operationId": "getFootprint"},
    ("get", "/api/v1/jobs/{name}/diff"): {"operationId": "getDiff"},
    ("get", "/api/v1/jobs/{name}/runs"): {"operationId": "getJobRuns"},
    ("post", "/api/v1/jobs/{name}/default"): {"operationId": "setDefault", "example": {"version": None}},
    ("post", "/api/v1/jobs/{name}/run"): {"operationId": "runJob", "example": {"targets": ["all"]},
                                          "links": {"GetTask": ("getTask", _BY_ID), "KillTask": ("killTask", _BY_ID)}},
    ("post", "/api/v1/schedules"): {
        "example": {"name": "hello-nightly", "job": "hello", "cron": "0 3 * * *", "tz": "UTC"},
        "links": {"GetSchedule": ("getSchedule", _SCHEDULED), "Pause": ("pauseSchedule", _SCHEDULED),
                  "Resume": ("resumeSchedule", _SCHEDULED), "Next": ("nextFires", _SCHEDULED),
                  "Runs": ("scheduleRuns", _SCHEDULED), "Delete": ("deleteSchedule", _SCHEDULED)},
    },
    ("get", "/api/v1/schedules/{name}"): {"operationId": "getSchedule"},
    ("post", "/api/v1/schedules/{name}/pause"): {"operationId": "pauseSchedule"},
    ("post", "/api/v1/schedules/{name}/resume"): {"operationId": "resumeSchedule"},
    ("get", "/api/v1/schedules/{name}/next"): {"operationId": "nextFires"},
    ("get", "/api/v1/schedules/{name}/runs"): {"operationId": "scheduleRuns"},
    ("delete", "/api/v1/schedules/{name}"): {"operationId": "deleteSchedule"},
}  # fmt: skip


def _with_examples_and_links(paths: dict[str, Any]) -> dict[str, Any]:
    out = {path: dict(ops) for path, ops in paths.items()}
    for (method, path), extra in _OPERATIONS.items():
        op = dict(out[path][method])
        if "operationId" in extra:
            op["operationId"] = extra["operationId"]
        if "example" in extra:
            media = op["requestBody"]["content"]["application/json"]
            op["requestBody"] = {**op["requestBody"], "content": {"application/json": {**media,
                                                                                      "example": extra["example"]}}}
        if "links" in extra:
            links = {name: {"operationId": target, "parameters": params}
                     for name, (target, params) in extra["links"].items()}
            op["responses"] = {code: {**answer, "links": links} if code in ("200", "201") else answer
                               for code, answer in op["responses"].items()}
        out[path][method] = op
    return out


def _with_guard_answers(paths: dict[str, Any], *, secured: bool) -> dict[str, Any]:
    """Each API operation's answers from the middleware, as the master's mode makes them:
    with a token 401, without one 403 (browser guard); every POST also 415 (not JSON);
    400 for an operation with parameters or a body."""
    out: dict[str, Any] = {}
    for path, ops in paths.items():
        out[path] = {}
        for method, op in ops.items():
            responses = dict(op["responses"])
            if op.get("security") == []:
                out[path][method] = {**op, "responses": responses}
                continue
            if not secured:
                responses.pop("401", None)
                responses["403"] = _FORBIDDEN
            elif method != "get":
                responses["403"] = _ROLE_FORBIDDEN
            if method == "post":
                responses["415"] = _NOT_JSON
            if (op.get("requestBody") or any(p["in"] == "query" for p in op.get("parameters", ()))) and (
                "400" not in responses
            ):
                responses["400"] = _BAD_INPUT
            out[path][method] = {**op, "responses": responses}
    return out


def document(*, secured: bool = True) -> dict[str, Any]:
    """The document for a master with a token (``secured``) or without one."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mschedule master API",
            "version": f"1 (wire protocol v{PROTOCOL_VERSION})",
            "description": "Run shell scripts on a fleet over MQTT. Errors are {error, field} with a 4xx status. "
            + _AUTH_MODES,
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}] if secured else [],
        "paths": _with_guard_answers(_with_examples_and_links(PATHS), secured=secured),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
