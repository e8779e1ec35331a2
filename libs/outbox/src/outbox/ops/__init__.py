"""Operator tools: the `outbox` command and what it reads (status, lag, why, replay, redrive, DLQ, traces)."""
