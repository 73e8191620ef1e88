"""Requests for the reactions work: 119 everyday assistant requests written for the project."""

from __future__ import annotations

from importlib import resources


def assistant_requests() -> list[str]:
    text = resources.files("corll.tasks").joinpath("data/assistant_requests.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
