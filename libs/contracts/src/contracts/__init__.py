"""The events the services exchange, declared once: one module per producing service.

- `contracts.auth`: topics `auth.account` (registered, password_changed) and `auth.mail` (one-time codes).
- `contracts.console`: topic `console.document` (the document's full state on every change).
- `contracts.indexer`: topic `indexer.document` (indexing reports about one document version).

Each module holds the topic names, the event type strings and a pydantic model per payload (all on
`base.Payload`: topic, key field, `event()`). Producers build their events from these models (`to_event`),
consumers register them as their handlers' `payload=` models (`ctx.payload`, validated before the handler
runs), so a field renamed or retyped on one side fails `mypy --strict` on the other. Payloads are JSON with the
field names below; `version` in a payload is the aggregate version the event carries
(`ce_aggregateversion`), which the outbox writer also adds to the data when a payload leaves it out.

`contracts.catalogue` renders them as the event catalogue in docs/events/ (an AsyncAPI 3.0 document and a
JSON Schema per event type): `make catalogue` after changing a contract.
"""
