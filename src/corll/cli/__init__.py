"""The `corll` command line, one module per wing, each registering its commands on the one `app`:
`research` (simulate, experiment, verdicts, report, learners, tasks), `reward_model` (reward-model
train / eval) and `service` (keys, serve, learn, train, status, versions, rollback, forget, export).
They import `common` and nothing of each other."""

from corll.cli import research, reward_model, service  # noqa: F401  (registering their commands)
from corll.cli.common import app

__all__ = ["app"]
