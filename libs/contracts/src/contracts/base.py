"""What every contract's payload shares: its topic, its key field, and how it becomes an outbox `Event`."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from outbox import Event


class Payload(BaseModel):
    """A payload of one topic. `KEY` names the field that holds the aggregate id (the Kafka key); `TYPE`
    is the event type of models that carry one type (models that carry several pass it to `event`)."""

    TOPIC: ClassVar[str]
    KEY: ClassVar[str]
    TYPE: ClassVar[str]

    def event(
        self,
        event_type: str | None = None,
        *,
        version: int | None = None,
        standalone: bool = False,
        exclude_none: bool = False,
    ) -> Event:
        """The event to record with the outbox writer: this payload as JSON, keyed by its aggregate."""
        return Event(
            topic=self.TOPIC,
            type=str(event_type or self.TYPE),  # a StrEnum member becomes its plain value
            aggregate_id=str(getattr(self, self.KEY)),
            data=self.model_dump(mode="json", exclude_none=exclude_none),
            version=version,
            standalone=standalone,
        )
