"""The durable feedback log: interactions, feedback events, policy versions, API keys."""

from corll.store.repository import (
    MAX_EDIT_CHARS,
    FeedbackRecord,
    NotFoundError,
    Principal,
    Store,
    StoreError,
    database_url,
)
from corll.store.schema import REACTIONS

__all__ = ["MAX_EDIT_CHARS", "REACTIONS", "FeedbackRecord", "NotFoundError", "Principal", "Store", "StoreError",
           "database_url"]
