"""The durable feedback log: interactions, feedback events, policy versions, API keys."""

from corll.store.repository import (
    LEARNER,
    MAX_EDIT_CHARS,
    ConflictError,
    FeedbackRecord,
    KeyInfo,
    LearnerBusyError,
    NotFoundError,
    Principal,
    Store,
    StoreError,
    database_url,
    forget,
    is_blank,
)
from corll.store.schema import REACTIONS

__all__ = ["LEARNER", "MAX_EDIT_CHARS", "REACTIONS", "ConflictError", "FeedbackRecord", "KeyInfo", "LearnerBusyError", "NotFoundError", "Principal",
           "Store", "StoreError", "database_url", "forget", "is_blank"]
