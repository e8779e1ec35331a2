"""Root test configuration: one topic namespace and one database-name suffix per pytest run.

Every process a test starts inherits OUTBOX_TOPIC_PREFIX, so a run never reads the backlog that earlier
runs left on a long-lived local broker (new consumer groups start from the earliest offset). Fixed database
names carry TEST_RUN_ID so concurrent runs on one PostgreSQL never drop each other's databases.
"""

import os
import uuid

RUN_ID = os.environ.setdefault("TEST_RUN_ID", uuid.uuid4().hex[:8])
os.environ.setdefault("OUTBOX_TOPIC_PREFIX", f"run-{RUN_ID}.")
