"""corll: make LLMs learn from the edits and reactions users already give."""

from corll.client import AsyncClient, Client, FeedbackError

__all__ = ["AsyncClient", "Client", "FeedbackError"]
