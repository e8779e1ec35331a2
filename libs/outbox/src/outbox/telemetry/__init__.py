"""Traces, metrics, logs and heartbeats for processes built on the outbox (public: servicekit uses them)."""
