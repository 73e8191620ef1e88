"""Export the feedback log in the formats the ecosystem reads.

- `trl-preference`: TRL's conversational preference format — prompt (messages),
  chosen and rejected (assistant turns) — from edits: the kept text over the response.
- `trl-kto`: TRL's unpaired format — prompt, completion, label — from reactions
  (love and like are desirable, dislike is not) and from edits (the kept text is
  desirable, the response it replaced is not).
- `openai-dpo`: OpenAI's preference fine-tuning format (input.messages,
  preferred_output, non_preferred_output).
- `sft`: chat transcripts ending with the text the user kept.

Edits identical to the response carry no preference and are left out of every format.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from corll.store import FeedbackRecord
from corll.files import atomic

FORMATS = ("trl-preference", "trl-kto", "openai-dpo", "sft")
DESIRABLE_REACTIONS = {"love": True, "like": True, "dislike": False}


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _is_informative_edit(r: FeedbackRecord) -> bool:
    return r.kind == "edit" and r.edit.strip() != r.response.strip()


def rows(records: list[FeedbackRecord], fmt: str) -> Iterator[dict]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    for r in records:
        if fmt == "trl-kto":
            if r.kind == "reaction":
                yield {"prompt": r.messages, "completion": _assistant(r.response),
                       "label": DESIRABLE_REACTIONS[r.reaction]}
            elif _is_informative_edit(r):
                yield {"prompt": r.messages, "completion": _assistant(r.edit), "label": True}
                yield {"prompt": r.messages, "completion": _assistant(r.response), "label": False}
        elif _is_informative_edit(r):
            if fmt == "trl-preference":
                yield {"prompt": r.messages, "chosen": _assistant(r.edit), "rejected": _assistant(r.response)}
            elif fmt == "openai-dpo":
                yield {"input": {"messages": r.messages}, "preferred_output": _assistant(r.edit),
                       "non_preferred_output": _assistant(r.response)}
            else:
                yield {"messages": [*r.messages, *_assistant(r.edit)]}


def write_jsonl(records: list[FeedbackRecord], fmt: str, out: Path) -> int:
    """Write the rows to `out` atomically (a temporary file, then rename); returns how many."""
    items = list(rows(records, fmt))
    with atomic(out) as tmp:
        tmp.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    return len(items)


def to_dataset(records: list[FeedbackRecord], fmt: str):
    """The same rows as a Hugging Face `datasets.Dataset`."""
    from datasets import Dataset

    return Dataset.from_list(list(rows(records, fmt)))
