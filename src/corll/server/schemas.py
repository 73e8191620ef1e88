"""The OpenAI-shaped requests and answers the HTTP layer accepts and gives, with their limits: everything a
request is checked against before any route runs (strict types, storable and visible text, id bounds).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from corll.store import MAX_EDIT_CHARS, is_blank

MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 32_000
MAX_CHOICES = 8
MAX_STOPS = 4
MAX_STOP_CHARS = 64
MAX_ID = 2**31 - 1  # ids are 32-bit integer columns on every backend: a larger one names nothing
VERSION_SUFFIX = re.compile(r"[0-9]{1,10}")  # ASCII digits only: str.isdigit also accepts '²' and '①'


def storable(text: str) -> str:
    """Text every backend stores losslessly: no lone surrogate (not UTF-8), no NUL (PostgreSQL refuses it)."""
    if "\x00" in text:
        raise ValueError("contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("contains a lone surrogate (not valid Unicode text)") from exc
    return text


Text = Annotated[str, AfterValidator(storable)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Text = Field(max_length=MAX_MESSAGE_CHARS)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] = Field(max_length=MAX_MESSAGE_CHARS)

    @model_validator(mode="after")
    def _some_content(self) -> ChatMessage:
        if isinstance(self.content, list) and not self.content:
            raise ValueError("'content' is an empty list: send a string or at least one text part")
        return self
    name: str | None = Field(default=None, max_length=64)

    def plain(self) -> dict:
        """{role, content} as the chat template takes it (a developer message is a system message)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(default=False, strict=True)


# OpenAI parameters corll cannot honour: refused by name rather than answered wrongly.
REFUSED = {
    "tools": "tool calls are not supported", "tool_choice": "tool calls are not supported",
    "functions": "function calls are not supported", "function_call": "function calls are not supported",
    "audio": "audio output is not supported", "prediction": "predicted outputs are not supported",
    "logit_bias": "logit_bias is not supported", "web_search_options": "web search is not supported",
    "reasoning_effort": "this model does not reason", "frequency_penalty": "penalties are not supported",
    "presence_penalty": "penalties are not supported", "top_k": "not an OpenAI parameter; corll samples with top-k 50",
}
# Accepted without effect: bookkeeping fields that do not change the answer.
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat request as far as corll honours it; anything else is refused by name."""

    model_config = ConfigDict(extra="allow")
    model: Text = Field(max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    # strict: a number or a boolean sent as a string ("2", "yes") is refused, as OpenAI refuses it
    temperature: float | None = Field(default=None, ge=0, le=2, strict=True, description="0 (or below 0.01): greedy")
    top_p: float | None = Field(default=None, gt=0, le=1, strict=True)
    max_tokens: int | None = Field(default=None, ge=1, le=1024, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1024, strict=True)
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES, strict=True, description="choices, sampled together")
    stop: Text | list[Text] | None = None
    logprobs: bool | None = Field(default=None, strict=True)
    top_logprobs: int | None = Field(default=None, ge=0, le=5, strict=True)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, strict=True)
    stream: bool | None = Field(default=None, strict=True)
    stream_options: StreamOptions | None = None
    modalities: list[Literal["text"]] | None = None
    response_format: dict | None = None

    @model_validator(mode="after")
    def _honourable(self) -> ChatCompletionRequest:
        for name, value in (self.model_extra or {}).items():
            if name in REFUSED and value not in (None, 0, [], {}):
                raise ValueError(f"'{name}': {REFUSED[name]}")
            if name not in REFUSED and name not in IGNORED:
                raise ValueError(f"unrecognized request argument '{name}'")
        if self.messages[-1].role != "user":
            raise ValueError("the last message must have role 'user'")
        if len(self.stops()) > MAX_STOPS or not all(0 < len(s) <= MAX_STOP_CHARS for s in self.stops()):
            raise ValueError(f"'stop': at most {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("'top_logprobs' needs 'logprobs': true")
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed with 'stream': true")
        if self.response_format is not None and self.response_format.get("type") != "text":
            raise ValueError("'response_format': only {'type': 'text'} is supported")
        return self

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    completion_id: Text = Field(min_length=1, max_length=64)
    choice: int = Field(default=0, ge=0, lt=MAX_CHOICES, strict=True,
                        description="Which choice of an n > 1 completion.")
    edit: Text | None = Field(default=None, max_length=MAX_EDIT_CHARS,
                              description="The text the user kept after editing the response.")
    reaction: Literal["love", "like", "dislike"] | None = None

    @model_validator(mode="after")
    def _one_signal(self) -> FeedbackRequest:
        if (self.edit is None) == (self.reaction is None):
            raise ValueError("give exactly one of 'edit' or 'reaction'")
        if self.edit is not None and is_blank(self.edit):
            raise ValueError("'edit' is empty or invisible (only spaces or zero-width characters): send the text "
                             "the user kept")
        return self


class FeedbackResponse(BaseModel):
    id: int
    completion_id: str
    kind: str


class InteractionOut(BaseModel):
    id: str
    user: str
    messages: list[dict]
    response: str
    policy_version: int | None
    created_at: str
    feedback: list[dict]


class InteractionPage(BaseModel):
    data: list[InteractionOut]
    next_before: str | None


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=0, le=MAX_ID, strict=True, description="The version to serve again; 0 is the base model.")
    user: Text | None = Field(default=None, min_length=1, max_length=128,
                              description="With version 0: whose versions to roll back (default: the shared policy).")
