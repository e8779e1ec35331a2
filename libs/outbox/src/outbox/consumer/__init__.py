"""The idempotent consumer: applies each event once in effect (inbox + effect in one transaction).

`runner.IdempotentConsumer` runs the fetch loop and commits offsets; `apply.ApplyPipeline` applies one batch
(guard, handlers, parking, outcomes, dead-lettering); `inbox`, `parking` and `retention` are its SQL.
"""
