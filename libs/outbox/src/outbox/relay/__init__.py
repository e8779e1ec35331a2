"""The relay: claims outbox rows in per-aggregate order and publishes them to Kafka.

`runner.Relay` drives the loops (wake-ups, claims, housekeeping); `pipeline` holds one batch's steps (claim,
publish, record acknowledgements); `store` and `retention` are its SQL; `publisher` the Kafka side.
"""
