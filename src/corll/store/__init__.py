"""The durable feedback log: interactions, feedback events, policy versions, API keys."""

from corll.store.database import LEARNER
from corll.store.records import (
    ConflictError,
    EditEvent,
    FeedbackRecord,
    KeyInfo,
    LearnerBusyError,
    NotFoundError,
    Principal,
    StoreError,
    is_blank,
)
from corll.store.repository import MAX_EDIT_CHARS, Store, database_url, forget
from corll.store.schema import REACTIONS

__all__ = ["LEARNER", "MAX_EDIT_CHARS", "REACTIONS", "ConflictError", "EditEvent", "FeedbackRecord", "KeyInfo", "LearnerBusyError",
           "NotFoundError", "Principal", "Store", "StoreError", "database_url", "forget", "is_blank"]
