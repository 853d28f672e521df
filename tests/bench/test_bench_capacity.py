"""bench/capacity.py end to end at a tiny size: a real master, instant protocol-level agents,
every result stored SUCCEED/0 (check_summary), and the edge row on its own mosquitto."""

from __future__ import annotations

from bench.capacity import edge_row, markdown, master_row


def test_a_capacity_row_measures_every_phase_and_checks_every_result(broker, tmp_path):
    row = master_row(broker.url, 40, tmp_path, hb_seconds=1.0, profile_dir=None)
    assert row["problems"] == []
    assert row["targets"] == 40 and row["heartbeats_sent"] >= 1
    assert row["dispatch_s"] > 0 and row["ingest_per_s"] > 0 and row["rss_peak_mb"] > row["rss_registry_mb"] / 2
    edge = edge_row(20, tmp_path, seconds=1.0)
    assert edge["connections"] == 20 and edge["rss_mb"] > 0
    text = markdown({"started_at": "now", "load_before": "0", "load_after": "0", "rows": [row], "edges": [edge]})
    assert "| 40 |" in text and "20 connections" in text
