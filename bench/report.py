"""Scenario outcomes, and their rendering as JSON and as the markdown table of the README."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Check:
    """One figure against its target: ``value <op> limit``."""

    figure: str
    value: float
    limit: float
    unit: str = ""
    op: str = "<="  #: "<=" (at most) or ">=" (at least)

    @property
    def ok(self) -> bool:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return False
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit

    @property
    def margin(self) -> str:
        """How far from the target, as a factor ("2.3x over")."""
        if not self.value or not self.limit:
            return ""
        factor = self.value / self.limit if self.op == "<=" else self.limit / self.value
        return f"{factor:.2f}x of target" if factor > 1 else ""


@dataclass
class Outcome:
    """What one scenario produced. ``correct`` is False when any target's result was missing
    or wrong: a fast run that drops results fails."""

    id: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    correct: bool | None = None
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    info: list[tuple[str, str]] = field(default_factory=list)  #: extra (figure, value) rows, no target

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.correct) and all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["checks"] = [{**asdict(c), "ok": c.ok} for c in self.checks]
        doc["ok"] = self.ok
        return doc


def write(results: dict[str, Any], outcomes: list[Outcome], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {**results, "scenarios": [o.to_json() for o in outcomes]}
    json_path = out_dir / "latest.json"
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md_path = out_dir / "latest.md"
    md_path.write_text(markdown(results, outcomes))
    return json_path, md_path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def _short(problems: list[str], width: int = 110) -> str:
    text = "; ".join(problems)
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown(results: dict[str, Any], outcomes: list[Outcome]) -> str:
    b = results.get("baselines", {})
    host = results.get("host", {})
    lines = [
        f"`{results.get('command', 'python -m bench')}`, {results.get('started_at', '?')}, {host.get('cpus', '?')} CPUs, "
        f"{host.get('mosquitto', 'mosquitto')}, Python {host.get('python', '?')}.",
        "",
        "| baseline (same run) | figure |",
        "| --- | --- |",
    ]
    for key in ("spawn_1_thread", "spawn_2_threads"):
        if key in b:
            lines.append(f"| fork+exec+wait `/bin/sh -c true`, {b[key]['threads']} thread(s) | {_fmt(b[key]['per_s'])}/s |")
    if "mqtt_qos1_rtt" in b:
        r = b["mqtt_qos1_rtt"]
        lines.append(f"| plain paho QoS-1 round trip via mosquitto (own process) | p50 {_fmt(r['p50_ms'])} ms, "
                     f"p99 {_fmt(r['p99_ms'])} ms |")  # fmt: skip
    if "transport_qos1_rtt" in b:
        r = b["transport_qos1_rtt"]
        lines.append(f"| the same through mschedule's transport, in the bench process | p50 {_fmt(r['p50_ms'])} ms, "
                     f"p99 {_fmt(r['p99_ms'])} ms |")  # fmt: skip
    lines += ["", "| # | scenario | figure | measured | target | met | results correct |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for o in outcomes:
        correct = "error: " + o.error[:120] if o.error else ("yes" if o.correct else "NO: " + _short(o.problems))
        if not o.checks:
            lines.append(f"| {o.id} | {o.name} | — | — | — | {'no' if not o.ok else 'yes'} | {correct} |")
        for i, c in enumerate(o.checks):
            met = "yes" if c.ok else f"**no** {c.margin}".rstrip()
            lines.append(
                f"| {o.id if i == 0 else ''} | {o.name if i == 0 else ''} | {c.figure} | {_fmt(c.value)} {c.unit} "
                f"| {c.op} {_fmt(c.limit)} {c.unit} | {met} | {correct if i == 0 else ''} |"
            )
        for figure, value in o.info:
            lines.append(f"|  |  | *{figure}* | {value} |  |  |  |")
    lines.append("")
    return "\n".join(lines)


def exit_status(outcomes: list[Outcome]) -> int:
    """``python -m bench``'s exit status: 0 only when scenarios ran and every one of them is
    correct (no error, every target's result present and right, each script run once).
    A missed speed target alone does not fail the run: the table shows it."""
    return 0 if outcomes and all(o.error is None and o.correct is True for o in outcomes) else 1


def verdict(outcomes: list[Outcome]) -> str:
    """One line for the end of the run: how many scenarios are correct, and which are not."""
    bad = [o.id for o in outcomes if not (o.error is None and o.correct is True)]
    head = f"{len(outcomes) - len(bad)} of {len(outcomes)} scenario(s) correct"
    return head if not bad else f"{head}; NOT correct: {', '.join(bad)} (exit status 1)"


README_START = "<!-- bench:table -->"
README_END = "<!-- /bench:table -->"


def update_readme(readme: Path, table: str) -> bool:
    """Put ``table`` between the README's bench markers (its Performance section). False
    when the markers are not there."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    readme.write_text(text[: start + len(README_START)] + "\n" + table.strip() + "\n" + text[end:])
    return True
