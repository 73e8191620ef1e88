"""The HTTP service: OpenAI-compatible chat completions that log every interaction, and feedback.

    POST /v1/chat/completions   (the official `openai` client works against it; `stream` supported)
    POST /v1/feedback           {completion_id, edit | reaction}
    GET  /v1/interactions       the caller's tenant's interactions, newest first, paged
    GET  /healthz               liveness and database reachability

Every request carries `Authorization: Bearer <API key>`; a key is bound to one
tenant and one user. Another tenant's completion id answers 404, like an id that
does not exist, so ids cannot be probed. Bad input answers 4xx with a message
naming the problem and writes nothing; a database outage answers 503.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.exc import SQLAlchemyError

from corll.server.engine import PolicyEngine
from corll.store import MAX_EDIT_CHARS, NotFoundError, Principal, Store, StoreError

MAX_BODY_BYTES = 256 * 1024
MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 32_000


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's request that corll honours; other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    temperature: float | None = Field(default=None, ge=0, le=2, description="0 (or below 0.01): greedy")
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1024)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1024)
    n: int = Field(default=1, ge=1, le=1)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    stream: bool = False

    @model_validator(mode="after")
    def _ends_with_a_user_turn(self) -> ChatCompletionRequest:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must have role 'user'")
        return self


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    completion_id: str = Field(min_length=1, max_length=64)
    edit: str | None = Field(default=None, max_length=MAX_EDIT_CHARS,
                             description="The text the user kept after editing the response.")
    reaction: Literal["love", "like", "dislike"] | None = None

    @model_validator(mode="after")
    def _one_signal(self) -> FeedbackRequest:
        if (self.edit is None) == (self.reaction is None):
            raise ValueError("give exactly one of 'edit' or 'reaction'")
        if self.edit is not None and not self.edit.strip():
            raise ValueError("'edit' is empty: send the text the user kept")
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


def error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


class BodySizeLimit:
    """Refuse request bodies over `limit` bytes with 413, whether or not Content-Length is sent."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await error(413, f"request body over {self.limit} bytes", "request_too_large")(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await error(413, f"request body over {self.limit} bytes", "request_too_large")(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class Unauthorized(Exception):
    pass


def principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The (tenant, user) the request's API key is bound to."""
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    who = request.app.state.store.authenticate(authorization.removeprefix("Bearer ").strip())
    if who is None:
        raise Unauthorized("invalid API key")
    return who


Caller = Annotated[Principal, Depends(principal)]


def create_app(store: Store, engine: PolicyEngine) -> FastAPI:
    app = FastAPI(title="corll", version="0.1.0",
                  description="OpenAI-compatible completions that learn from users' edits and reactions.")

    app.state.store = store

    @app.exception_handler(Unauthorized)
    def _unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        return error(401, str(exc), "authentication_error")

    @app.exception_handler(NotFoundError)
    def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return error(404, str(exc), "not_found")

    @app.exception_handler(StoreError)
    def _refused(_: Request, exc: StoreError) -> JSONResponse:
        return error(422, str(exc), "invalid_request_error")

    @app.exception_handler(SQLAlchemyError)
    def _database_down(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        return error(503, "the feedback store is unavailable; nothing was recorded, retry later", "unavailable")

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            store.active_version("", None)
        except SQLAlchemyError:
            return error(503, "database unreachable", "unavailable")
        return JSONResponse({"status": "ok", "model": engine.model_name})

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(body: ChatCompletionRequest, who: Caller):
        messages = [m.model_dump() for m in body.messages]
        completion = engine.complete(who.tenant, who.user, messages, temperature=body.temperature,
                                     top_p=body.top_p, max_tokens=body.max_completion_tokens or body.max_tokens,
                                     seed=body.seed)
        # Logged before the answer leaves: an id the client receives always exists in the store.
        completion_id = store.record_interaction(who, messages, completion.text,
                                                 policy_version_id=completion.version_id,
                                                 sampling=completion.sampling, response_logprob=completion.logprob)
        created = int(time.time())
        if body.stream:
            return StreamingResponse(stream_chunks(completion_id, created, body.model, completion.text,
                                                   completion.finish_reason), media_type="text/event-stream")
        return {
            "id": completion_id, "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                         "finish_reason": completion.finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
                      "total_tokens": completion.prompt_tokens + completion.completion_tokens},
            "system_fingerprint": f"corll-policy-{completion.version_id or 0}",
        }

    @app.post("/v1/feedback", response_model=FeedbackResponse)
    def feedback(body: FeedbackRequest, who: Caller) -> FeedbackResponse:
        event_id = store.add_feedback(who, body.completion_id, edit=body.edit, reaction=body.reaction)
        return FeedbackResponse(id=event_id, completion_id=body.completion_id,
                                kind="edit" if body.edit is not None else "reaction")

    @app.get("/v1/interactions", response_model=InteractionPage)
    def interactions(who: Caller, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                     before: Annotated[str | None, Query(max_length=64)] = None) -> InteractionPage:
        rows = store.list_interactions(who.tenant, limit=limit, before=before)
        data = [InteractionOut(id=r.id, user=r.user, messages=r.messages, response=r.response,
                               policy_version=r.policy_version_id, created_at=r.created_at.isoformat(),
                               feedback=[{"id": f.id, "kind": f.kind, "edit": f.edit, "reaction": f.reaction,
                                          "created_at": f.created_at.isoformat()} for f in r.feedback])
                for r in rows]
        return InteractionPage(data=data, next_before=rows[-1].id if len(rows) == limit else None)

    app.add_middleware(BodySizeLimit, limit=MAX_BODY_BYTES)
    return app


def stream_chunks(completion_id: str, created: int, model: str, text: str, finish_reason: str) -> Iterator[str]:
    """Server-sent events in OpenAI's chat.completion.chunk format, word by word."""
    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    pieces = text.split(" ")
    for i, piece in enumerate(pieces):
        yield chunk({"content": piece if i == 0 else " " + piece})
    yield chunk({}, finish_reason)
    yield "data: [DONE]\n\n"
