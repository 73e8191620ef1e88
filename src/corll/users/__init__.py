"""Simulated users: they answer drafts the way the papers' protocols say real users do.

The learners never know whether feedback came from a simulated user or from a
person through the store: an editor returns `Edit`s, a labeller returns preferences.
"""

from corll.users.dueling import DuelingLabeller, Duel
from corll.users.expert_editor import EditChoice, ExpertEditor, choose_edit

__all__ = ["Duel", "DuelingLabeller", "EditChoice", "ExpertEditor", "choose_edit"]
