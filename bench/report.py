"""The table `make bench` prints from its results."""

from __future__ import annotations

from typing import Any


def _row(label: str, value: object) -> None:
    print(f"{label:<52}{value!s:>16}")


def print_table(result: dict[str, Any]) -> None:
    print()
    _row("measure", "value")
    for relays, drain in result["drain"].items():
        _row(f"relay drain, {relays} relay process(es) (events/s)", drain["events_per_s"])
        _row("  topic: lost/duplicated/out of order", tuple(drain["topic_check"].values()))
    labelled = [(f"notify {result['latency_notify']['offered_events_per_s']}", result["latency_notify"])]
    labelled += [(f"notify {rate}", run) for rate, run in result["latency_by_rate"].items()]
    labelled += [
        ("poll only", result["latency_poll_only"]),
        ("per-event handler", result["latency_per_event_handler"]),
        (f"linger {result['latency_linger']['linger_ms']} ms", result["latency_linger"]),
    ]
    for label, run in labelled:
        _row(f"achieved rate ({label}, events/s)", run["rate_events_per_s"])
        for k in ("p50", "p95", "p99", "max"):
            _row(f"  commit->applied {k} ms", run["latency_ms"][k])
        for k in ("p50", "p99"):
            _row(f"  of which commit->broker {k} ms", run["commit_to_broker_ms"][k])
        cpu = run["cpu_us_per_event"]
        _row("  CPU µs/event: total", cpu["total"])
        _row(
            "    relay / consumer / postgresql / broker",
            (cpu["relay"], cpu["consumer"], cpu["postgresql"], cpu["broker"]),
        )
        _row("  duplicates applied", run["duplicates_applied"])
        _row(
            "  applied / caught up s after the last write",
            (run["applied"], run["caught_up_s_after_last_write"]),
        )
    _row(
        "highest rate kept with p99 <= 100 ms (events/s)", result["highest_sustained_events_per_s_p99_100ms"]
    )
    for scale in result["consumer_scale_out"]:
        _row(f"consumers x{scale['consumer_processes']} on a backlog (events/s)", scale["events_per_s"])
    cost = result["writer_cost"]
    _row("writer tx/s without / with an event", (cost["without_event_tx_per_s"], cost["with_event_tx_per_s"]))
    _row("  event overhead %", cost["event_overhead_pct"])
