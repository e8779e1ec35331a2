"""The `outbox` command's sub-commands, one module each, and what they share: output (a table for people,
`--json` for scripts) and errors (one line naming the fix, exit 2). `outbox.ops.cli` assembles them."""
