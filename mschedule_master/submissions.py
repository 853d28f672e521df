"""Rollouts over plain MQTT, for users with only ``mosquitto_pub`` and ``mosquitto_sub``.

* :class:`SubmitHandler`: a ``submit`` on ``<prefix>/submit`` creates a task; the
  ``submit_reply`` goes to the request's MQTT v5 response topic (with its correlation
  data) when it has one under ``<prefix>/submit/reply/`` (a request naming any other is
  refused), else to ``<prefix>/submit/reply/<request_id>``. A repeated request id (a QoS-1
  redelivery, or a user pressing enter twice) gets the first task's reply again instead
  of a second task; the same id with a different request is refused. A retained submit
  is never run: it is refused and cleared. With MQTT 3.1.1 (``portable_topics``) a
  request id holding ``.`` or a space is refused unanswered: its reply topic is one that
  3.1.1 brokers such as NATS refuse.
* :class:`ProgressPublisher`: one ``progress`` on ``<prefix>/tasks/<task_id>/progress``
  per task per committed batch that changed its targets (the batch's changes in it), and a
  retained ``summary`` on ``<prefix>/tasks/<task_id>/summary`` when the task ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mschedule_agent import protocol
from mschedule_agent.protocol import Submit, SubmitReply, Topics
from mschedule_agent.transport import Incoming, Transport, portable_topic

from . import models
from .engine import Engine
from .models import InvalidRequest, NotFound
from .states import TaskState

log = logging.getLogger(__name__)


class SubmitHandler:
    def __init__(
        self,
        engine: Engine,
        topics: Topics,
        *,
        submit: Callable[[Submit], tuple[models.Task, list[str]]] | None = None,
        portable_topics: bool = False,
    ) -> None:
        self.engine = engine
        self.portable_topics = portable_topics  #: MQTT 3.1.1: reply topics without '.' or ' '
        self.topics = topics
        self._submit = submit or engine.submit  #: a job submit needs the master's JobService
        self.reply_prefix = f"{topics.prefix}/submit/reply/"

    def handle(self, incoming: Incoming) -> None:
        """Called inside the engine's batch; the reply is published after the commit."""
        if not incoming.payload:
            return  # a retained submit being cleared (by this master or its publisher)
        if incoming.response_topic is not None and not self._reply_topic_ok(incoming.response_topic):
            self._refuse(incoming, f"the response topic must be under {self.reply_prefix}", "response_topic")
            return
        if incoming.retain:
            self._refuse_retained(incoming)
            return
        try:
            spec = protocol.decode_as(incoming.payload, Submit)
        except protocol.DecodeError as e:
            self._refuse(incoming, str(e), e.field)
            return
        if self.portable_topics and spec.request_id and not portable_topic(spec.request_id):
            log.warning(
                "refused a submission (request %r): with MQTT 3.1.1 a request id may not hold '.' or ' ' "
                "(its reply topic would be refused by the broker); nobody to answer", spec.request_id[:200],
            )  # fmt: skip
            return
        try:
            task, targets = self._submit(spec)
        except (InvalidRequest, NotFound) as e:
            log.warning("refused a submission (request %s): %s", spec.request_id, e)
            field = e.field if isinstance(e, InvalidRequest) else "job"  # NotFound: an unknown job or version
            self._reply(incoming, SubmitReply(ok=False, request_id=spec.request_id, error=str(e), field=field))
            return
        log.info("task %s submitted over MQTT (request %s)", task.id, spec.request_id, extra={"task_id": task.id})
        self._reply(incoming, SubmitReply(ok=True, request_id=spec.request_id, task_id=task.id, targets=targets))

    def _refuse(self, incoming: Incoming, error: str, field: str | None) -> None:
        request_id = _raw_request_id(incoming.payload)
        log.warning("refused a submission (request %s): %s", request_id, error)
        self._reply(incoming, SubmitReply(ok=False, request_id=request_id, error=error, field=field))

    def _refuse_retained(self, incoming: Incoming) -> None:
        """A retained submit would run again at every master restart: never run it, and
        clear it from the broker so that nobody else receives it either."""
        self._refuse(
            incoming,
            "a retained submit is never run (the broker would hand it to every restart of the master): "
            "publish it without retain; the retained message was cleared",
            "retain",
        )
        self.engine.transport.publish(self.topics.submit(), b"", qos=1, retain=True)

    def _reply_topic_ok(self, topic: str) -> bool:
        rest = topic.removeprefix(self.reply_prefix)
        return rest != topic and bool(rest) and not any(c in rest for c in "+#\x00") and len(topic) <= 65535

    def _reply(self, incoming: Incoming, reply: SubmitReply) -> None:
        """To the request's response topic (only under ``<prefix>/submit/reply/``), else to
        ``<prefix>/submit/reply/<request_id>``; a response topic elsewhere gets nothing."""
        if incoming.response_topic:
            if self._reply_topic_ok(incoming.response_topic):
                self.engine.publish(incoming.response_topic, reply, correlation_data=incoming.correlation_data)
                return
            log.warning(
                "a submission names the response topic %r, outside %s: nothing is published there",
                incoming.response_topic[:200], self.reply_prefix,
            )  # fmt: skip
        if reply.request_id and protocol._topic_level_ok(reply.request_id) and self._portable(reply.request_id):
            self.engine.publish(self.topics.submit_reply(reply.request_id), reply)
        else:
            log.warning("submission has neither a usable response topic nor a request_id: nobody to answer")


    def _portable(self, request_id: str) -> bool:
        return not self.portable_topics or portable_topic(request_id)


def _raw_request_id(data: bytes) -> str | None:
    """The request id of a submission that failed to decode, when it is readable."""
    rid = protocol.peek(data, "request_id")
    return rid if rid is not None and protocol._topic_level_ok(rid) else None


class ProgressPublisher:
    """An engine batch subscriber (runs after each commit) that publishes task progress:
    one ``progress`` per task per batch, not one per target change (a batch of 2,000
    results to one task was 2,000 QoS-1 publications), then the summary of a task that ended."""

    def __init__(self, transport: Transport, topics: Topics) -> None:
        self.transport = transport
        self.topics = topics

    def __call__(self, event: models.Event) -> None:
        self.publish([event])

    def publish(self, events: list[models.Event]) -> None:
        pending: dict[str, list[models.Event]] = {}  #: task id -> its target events, in order
        for event in events:
            if event.task_id is None:
                continue
            if event.kind == "target":
                pending.setdefault(event.task_id, []).append(event)
            elif event.kind == "task" and TaskState(event.data["state"]).final:
                self._progress(event.task_id, pending.pop(event.task_id, []))
                self._summary(event)
        for task_id, changes in pending.items():
            self._progress(task_id, changes)

    def _progress(self, task_id: str, events: list[models.Event]) -> None:
        if not events:
            return
        last = events[-1]
        d = last.data
        changes = {e.data["agent_id"]: {"state": e.data["state"], "code": e.data.get("code")} for e in events}
        msg = protocol.Progress(
            task_id=task_id, state=d["task_state"], counts=d["counts"], ts=last.ts, agent_id=d["agent_id"],
            target_state=d["state"], code=d.get("code"), changes=changes if len(changes) > 1 else None,
        )  # fmt: skip
        self.transport.publish(self.topics.task_progress(task_id), protocol.encode(msg), qos=1)

    def _summary(self, event: models.Event) -> None:
        assert event.task_id is not None
        d = event.data
        summary = protocol.Summary(
            task_id=event.task_id, state=d["state"], counts=d["counts"], ts=event.ts, reason=d.get("reason", ""),
            targets=d.get("targets", {}),
        )  # fmt: skip
        self.transport.publish(self.topics.task_summary(event.task_id), protocol.encode(summary), qos=1, retain=True)
