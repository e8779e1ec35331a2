"""The idempotent consumer: applies each event once in effect (inbox + effect in one transaction).

`runner.IdempotentConsumer` runs the fetch loop and commits offsets; `routing` registers handlers (with their
`payload=` models) and decodes records; `apply.ApplyPipeline` applies one batch (guard, handlers, parking,
outcomes, dead-lettering) over the stores of `ports` (`inbox`, `parking` and `retention` are their SQL,
`dead_letters` the Kafka side; `outbox.testing` has in-memory ones); `handlers` is what a handler gets.
"""
