"""Simulated users: they answer drafts the way the papers' protocols say real users do.

The learners never know whether feedback came from a simulated user or from a
person through the store: an editor returns `Edit`s, a labeller returns preferences.
"""

from collections.abc import Sequence
from typing import Protocol

from corll.config import EDITORS
from corll.feedback import Edit
from corll.users.dueling import DuelingLabeller, Duel
from corll.users.expert_editor import EditChoice, ExpertEditor, choose_edit
from corll.users.llm_editor import LLMEditor
from corll.users.local_editor import LocalEditor



class Editor(Protocol):
    """Anything that answers drafts with edits (None: no edit, no preference)."""

    def edit(self, prompts: Sequence[str], drafts: Sequence[str]) -> list[Edit | None]: ...

__all__ = ["EDITORS", "Duel", "Editor", "DuelingLabeller", "EditChoice", "ExpertEditor", "LLMEditor", "LocalEditor", "choose_edit"]
