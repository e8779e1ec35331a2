"""Root test configuration: one topic namespace per pytest run.

Every process a test starts inherits OUTBOX_TOPIC_PREFIX, so a run never reads the backlog that earlier
runs left on a long-lived local broker (new consumer groups start from the earliest offset).
"""

import os
import uuid

os.environ.setdefault("OUTBOX_TOPIC_PREFIX", f"run-{uuid.uuid4().hex[:8]}.")
