"""The HTTP service: OpenAI-compatible chat completions that log every interaction, and feedback.

    POST /v1/chat/completions   the official `openai` client works unchanged: n, stop, logprobs,
                                seed, streaming token by token (`stream_options.include_usage`)
    GET  /v1/models             the base model and the policy versions the caller may pin
    POST /v1/feedback           {completion_id, edit | reaction}
    GET  /v1/interactions       the caller's own interactions (an admin key: the tenant's), newest first
    GET  /v1/me                 who the key acts for
    GET  /v1/versions           the policy versions serving the caller (an admin key: the tenant's), with
                                the learner's decisions and reasons
    POST /v1/rollback           {version, user?}: serve an earlier version or the base model (admin keys only)
    GET  /                      the browser editor: draft, edit, keep, react, history, what corll learned
    DELETE /v1/users/{user}     forget a user of the tenant (admin keys only)
    GET  /healthz               liveness and database reachability
    GET  /metrics               Prometheus text format: requests, latency, feedback, batch size

Every request carries `Authorization: Bearer <API key>`; a key is bound to one
tenant and one user. Feedback on a completion comes from the user who received it
(or the tenant's admin key) and is recorded with its author; anyone else's
completion id answers 404, like an id that does not exist, so ids cannot be
probed. `Idempotency-Key` makes feedback retries safe. Every refused request answers 4xx in
OpenAI's error shape (`{"error": {"message", "type", "param", "code"}}`), naming
the field and the problem, and writes nothing; a database outage answers 503.

`model` is the served model's name (the caller's active version: their own
adapter, else their tenant's, else the base model) or `<name>:v<id>` to pin one
version, as vLLM addresses its LoRA modules. A completion is logged once it has
finished, before its last chunk leaves: an id whose answer the client saw exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from importlib.resources import files
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import AfterValidator
from sqlalchemy.exc import SQLAlchemyError

from corll.server.protocol import (Choice, Engine, EngineError, GenerationRequest, Overloaded, ServedModel, Stream,
                                   add_delta)
from corll.server.errors import (MAX_BODY_BYTES, BodySizeLimit, ModelNotFound, Unauthorized, error, error_event,
                                 validation_error)
from corll.server.metrics import MetricsMiddleware, ServiceMetrics
from corll.server.schemas import (MAX_ID, VERSION_SUFFIX, ChatCompletionRequest, FeedbackRequest, FeedbackResponse,
                                 InteractionOut, InteractionPage, RollbackRequest, storable)
from corll.store import ConflictError, NotFoundError, Principal, Store, StoreError, forget
from corll.service.versions import version_rows

def choice_id(completion_id: str, index: int) -> str:
    """The logged interaction behind choice `index` of a completion (choice 0 keeps the completion's id)."""
    return completion_id if index == 0 else f"{completion_id}-{index}"


def principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The (tenant, user) the request's API key is bound to."""
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    who = request.app.state.store.authenticate(authorization.removeprefix("Bearer ").strip())
    if who is None:
        raise Unauthorized("invalid API key")
    return who


Caller = Annotated[Principal, Depends(principal)]


def create_app(store: Store, engine: Engine, *, learner: Callable[[], dict] | None = None) -> FastAPI:
    """The service over `store` and `engine`; `learner` says how the learner beside the server is
    (`corll serve --learn`), for `/healthz`."""
    # No /docs or /redoc: FastAPI's pages load Swagger's and ReDoc's assets from a CDN, and corll's pages
    # load nothing from the network. The spec itself is served at /openapi.json.
    app = FastAPI(title="corll", version="0.1.0", docs_url=None, redoc_url=None,
                  description="OpenAI-compatible completions that learn from users' edits and reactions.")

    app.state.store = store
    metrics = ServiceMetrics(store, engine)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return metrics.exposition()

    @app.exception_handler(RequestValidationError)
    def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Unknown routes (404), wrong methods (405) and the like, in OpenAI's shape too."""
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error(exc.status_code, message, code=str(exc.detail).lower().replace(" ", "_"))

    @app.exception_handler(Unauthorized)
    def _unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        return error(401, str(exc), "authentication_error", code="invalid_api_key")

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return error(exc.status, str(exc), exc.kind)

    @app.exception_handler(ModelNotFound)
    def _no_model(_: Request, exc: ModelNotFound) -> JSONResponse:
        return error(404, str(exc), param="model", code="model_not_found")

    @app.exception_handler(ConflictError)
    def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return error(409, str(exc), param="Idempotency-Key", code="idempotency_key_reused")

    @app.exception_handler(NotFoundError)
    def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return error(404, str(exc), code="not_found")

    @app.exception_handler(StoreError)
    def _refused(_: Request, exc: StoreError) -> JSONResponse:
        return error(400, str(exc), code="invalid_value")

    @app.exception_handler(SQLAlchemyError)
    def _database_down(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        return error(503, "the feedback store is unavailable; nothing was recorded, retry later", "unavailable")

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            store.active_version("", None)
        except SQLAlchemyError:
            return error(503, "database unreachable", "unavailable")
        state = engine.health()
        if state["state"] != "ready":
            return error(503, f"the {state['engine']} engine is {state['state']}", "unavailable")
        return JSONResponse({"status": "ok", "model": engine.model_name, "engine": state,
                             **({"learner": learner()} if learner is not None else {})})

    @app.get("/v1/models")
    def models(who: Caller) -> dict:
        return {"object": "list", "data": served_models(store, engine.model_name, who)}

    @app.get("/v1/models/{model_id:path}")
    def model(model_id: str, who: Caller) -> dict:
        found = [m for m in served_models(store, engine.model_name, who) if m["id"] == model_id]
        if not found:
            raise ModelNotFound(f"the model '{model_id}' does not exist")
        return found[0]

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request, who: Caller):
        messages = [m.plain() for m in body.messages]
        served, prompt_ids = await run_in_threadpool(
            lambda: (resolve_model(store, engine.model_name, who, body.model), engine.prompt_ids(messages)))
        max_tokens = min(body.max_completion_tokens or body.max_tokens or engine.default_max_tokens,
                         engine.max_tokens_limit)
        if len(prompt_ids) + max_tokens > engine.context_length:
            return error(400, f"the prompt has {len(prompt_ids)} tokens; with max_tokens {max_tokens} that exceeds "
                              f"the model's context of {engine.context_length}", param="messages",
                         code="context_length_exceeded")
        generation = GenerationRequest(
            prompt_ids, served, n=body.n or 1, temperature=1.0 if body.temperature is None else body.temperature,
            top_p=body.top_p or 1.0, max_tokens=max_tokens, stop=body.stops(), seed=body.seed,
            logprobs=bool(body.logprobs), top_logprobs=body.top_logprobs or 0, user=f"{who.tenant}/{who.user}")
        try:
            stream = engine.submit(generation, asyncio.get_running_loop())
        except Overloaded as exc:
            response = error(429, str(exc), "rate_limit_error", code="too_many_requests")
            response.headers["Retry-After"] = f"{exc.retry_after:g}"
            return response
        answer = Answer(store, who, body, messages, stream, engine.model_name)
        if body.stream:
            return StreamingResponse(answer.events(), media_type="text/event-stream")
        choices = await answer.wait(request)
        if choices is None:  # the client left: nothing to answer, nothing logged
            return Response(status_code=499)
        ids = await run_in_threadpool(answer.record, choices)
        metrics.completion_tokens.inc(sum(c.tokens for c in choices))
        return answer.completion(ids[0], choices)

    @app.post("/v1/feedback", response_model=FeedbackResponse)
    def feedback(body: FeedbackRequest, who: Caller, idempotency_key: Annotated[str | None, Header(
            max_length=255, description="Retries with the same key return the first answer and store nothing.")]
                 = None) -> FeedbackResponse:
        def answer(event_id: int) -> dict:
            return FeedbackResponse(id=event_id, completion_id=body.completion_id,
                                    kind="edit" if body.edit is not None else "reaction").model_dump()

        idempotency = None
        if idempotency_key is not None:
            digest = hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest()
            idempotency = (idempotency_key, digest, answer)
        result = store.add_feedback(who, choice_id(body.completion_id, body.choice), edit=body.edit,
                                    reaction=body.reaction, idempotency=idempotency)
        response = FeedbackResponse(**(result if isinstance(result, dict) else answer(result)))
        metrics.feedback.labels(response.kind).inc()
        return response

    @app.delete("/v1/users/{user}")
    def forget_user(user: Annotated[str, Path(min_length=1, max_length=128), AfterValidator(storable)],
                    who: Caller) -> dict:
        """Forget a user of the caller's tenant (admin keys only): their log, keys and every version
        trained on their feedback."""
        if not who.admin:
            return error(403, "forgetting a user needs an admin key of the tenant", "permission_error",
                         code="admin_required")
        removed = forget(store, who.tenant, user)
        engine.forget(f"{who.tenant}/{user}")
        return {"tenant": who.tenant, "user": user, **{k: v for k, v in removed.items() if k != "adapter_paths"}}

    @app.get("/v1/me")
    def me(who: Caller) -> dict:
        return {"tenant": who.tenant, "user": who.user, "admin": who.admin, "model": engine.model_name}

    @app.get("/v1/versions")
    def versions(who: Caller) -> dict:
        """The versions that may serve the caller (theirs and the tenant's shared ones); an admin key: all
        of the tenant's."""
        rows = version_rows(store, who.tenant, None if who.admin else {who.user, None})
        return {"object": "list", "data": [r.as_dict() for r in rows]}

    @app.post("/v1/rollback")
    def rollback(body: RollbackRequest, who: Caller) -> dict:
        if not who.admin:
            return error(403, "rolling back needs an admin key of the tenant", "permission_error",
                         code="admin_required")
        if body.version and store.version_tenant(body.version) != who.tenant:
            raise NotFoundError(f"no policy version {body.version}")  # another tenant's ids are not revealed
        row = store.rollback(body.version, tenant=who.tenant, user=body.user)
        return {"active": row.id, "tenant": row.tenant, "user": row.user, "base_model": row.adapter_path is None}

    @app.get("/", include_in_schema=False)
    def editor() -> Response:
        return page("index.html")

    @app.get("/ui/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        return page(name)

    @app.get("/v1/interactions", response_model=InteractionPage)
    def interactions(who: Caller, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                     before: Annotated[str | None, Query(max_length=64), AfterValidator(storable)] = None
                     ) -> InteractionPage:
        rows = store.list_interactions(who.tenant, user=None if who.admin else who.user, limit=limit, before=before)
        data = [InteractionOut(id=r.id, user=r.user, messages=r.messages, response=r.response,
                               policy_version=r.policy_version_id, created_at=r.created_at.isoformat(),
                               feedback=[{"id": f.id, "kind": f.kind, "edit": f.edit, "reaction": f.reaction,
                                          "author": f.author, "created_at": f.created_at.isoformat()}
                                         for f in r.feedback])
                for r in rows]
        return InteractionPage(data=data, next_before=rows[-1].id if len(rows) == limit else None)

    app.add_middleware(BodySizeLimit, limit=MAX_BODY_BYTES)
    return app


STATIC = files("corll.server").joinpath("static")
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8"}
# The page loads nothing from elsewhere and runs only its own script: injected markup could not run
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def page(name: str) -> Response:
    """A file of the browser editor, shipped in the package (no build step, nothing from a CDN)."""
    asset = STATIC.joinpath(name)
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if "/" in name or suffix not in MEDIA_TYPES or not asset.is_file():
        raise StarletteHTTPException(404, "Not Found")
    return Response(asset.read_bytes(), media_type=MEDIA_TYPES[suffix],
                    headers={"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})


def version_model(base: str, version_id: int) -> str:
    return f"{base}:v{version_id}"


def served_models(store: Store, base: str, who: Principal) -> list[dict]:
    """The base name (the caller's active version) and each version the caller may pin: the
    tenant's shared ones and the caller's own."""
    listed = [{"id": base, "object": "model", "created": 0, "owned_by": "corll", "root": base, "parent": None}]
    for v in store.versions(who.tenant):
        if v.user in (None, who.user) and v.retired_at is None:
            listed.append({"id": version_model(base, v.id), "object": "model",
                           "created": int(v.created_at.timestamp()), "owned_by": who.tenant, "root": base,
                           "parent": base, "active": v.active, "user": v.user})
    return listed


def resolve_model(store: Store, base: str, who: Principal, name: str) -> ServedModel:
    """What `model` names for this caller; unknown names (and other users' versions) are not found. The base
    name is the caller's active version, or, for the share of requests an open canary takes, its candidate
    (`corll.service.canary`; the interaction logs which version drafted)."""
    if name == base:
        version = store.drafters(who.tenant, who.user).pick(random.random())
    else:
        prefix = f"{base}:v"
        version_id = name.removeprefix(prefix) if name.startswith(prefix) else ""
        version = None
        if VERSION_SUFFIX.fullmatch(version_id) and int(version_id) <= MAX_ID:
            try:
                version = store.version(int(version_id))
            except NotFoundError:
                version = None
        if version is None or version.tenant != who.tenant or version.user not in (None, who.user) \
                or version.retired_at is not None:
            known = ", ".join(m["id"] for m in served_models(store, base, who)[:5])
            raise ModelNotFound(f"the model '{name}' does not exist; this server has: {known}")
    if version is None:
        return ServedModel(None, None)
    return ServedModel(version.id, version.adapter_path)


class Answer:
    """One chat completion on its way out: gathered or streamed, then logged."""

    def __init__(self, store: Store, who: Principal, body: ChatCompletionRequest, messages: list[dict],
                 stream: Stream, model: str) -> None:
        self.store, self.who, self.body, self.messages, self.stream = store, who, body, messages, stream
        self.model = body.model or model
        self.id = new_completion_id()
        self.created = int(time.time())
        self.fingerprint = f"corll-policy-{stream.request.model.version_id or 0}"

    async def wait(self, request: Request) -> list[Choice] | None:
        """Every choice, or None if the client disconnected first (its rows are freed)."""
        choices = [Choice() for _ in range(self.stream.request.n)]
        waiter = asyncio.ensure_future(self._gather(choices))
        while not waiter.done():
            done, _ = await asyncio.wait({waiter}, timeout=0.5)
            if not done and await request.is_disconnected():
                self.stream.cancel()
                waiter.cancel()
                return None
        waiter.result()
        return choices

    async def _gather(self, choices: list[Choice]) -> None:
        async for delta in self.stream.deltas():
            add_delta(choices[delta.index], delta)

    def record(self, choices: list[Choice]) -> list[str]:
        """Log every choice (one transaction); returns their interaction ids."""
        sampling = {"temperature": self.stream.request.temperature, "top_p": self.stream.request.top_p,
                    "top_k": self.stream.request.top_k, "max_new_tokens": self.stream.request.max_tokens,
                    "seed": self.stream.seed, "stop": list(self.stream.request.stop), "n": len(choices)}
        return self.store.record_interactions(
            self.who, self.messages, [(choice_id(self.id, i), c.text, c.logprob) for i, c in enumerate(choices)],
            policy_version_id=self.stream.request.model.version_id, sampling=sampling)

    def usage(self, choices: list[Choice]) -> dict:
        completion = sum(c.tokens for c in choices)
        return {"prompt_tokens": self.stream.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.stream.prompt_tokens + completion}

    def logprobs(self, entries) -> dict | None:
        if not self.body.logprobs:
            return None
        return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": list(e.token.encode()),
                             "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                              for t, v in e.top]} for e in entries]}

    def completion(self, completion_id: str, choices: list[Choice]) -> dict:
        return {
            "id": completion_id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": c.finish_reason, "logprobs": self.logprobs(c.logprobs)}
                        for i, c in enumerate(choices)],
            "usage": self.usage(choices), "system_fingerprint": self.fingerprint,
        }

    def chunk(self, choices: list[dict], **extra) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint, "choices": choices, **extra}
        return f"data: {json.dumps(body)}\n\n"

    async def events(self) -> AsyncIterator[str]:
        """Server-sent events as tokens are decoded; the log is written before the finishing chunks."""
        usage = {"usage": None} if self.body.stream_options and self.body.stream_options.include_usage else {}
        choices = [Choice() for _ in range(self.stream.request.n)]
        finishing: list[str] = []
        try:
            for i in range(len(choices)):
                yield self.chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                   "finish_reason": None}], **usage)
            async for delta in self.stream.deltas():
                add_delta(choices[delta.index], delta)
                if delta.text or delta.logprobs:
                    yield self.chunk([{"index": delta.index, "delta": {"content": delta.text},
                                       "logprobs": self.logprobs(delta.logprobs), "finish_reason": None}], **usage)
                if delta.finish_reason:
                    finishing.append(self.chunk([{"index": delta.index, "delta": {}, "logprobs": None,
                                                  "finish_reason": delta.finish_reason}], **usage))
            await run_in_threadpool(self.record, choices)
        except SQLAlchemyError:
            yield error_event(503, "the feedback store is unavailable; this completion was not logged", "unavailable")
            return
        except NotFoundError as exc:  # the user was forgotten while this completion was decoding
            yield error_event(404, str(exc), "invalid_request_error")
            return
        except EngineError as exc:
            yield error_event(exc.status, str(exc), exc.kind)
            return
        except Exception as exc:  # noqa: BLE001 - the stream has started: report in-band, as OpenAI does
            yield error_event(500, f"generation failed: {exc}", "server_error")
            return
        finally:
            self.stream.cancel()  # a no-op when finished; frees the rows when the client left mid-stream
        for event in finishing:
            yield event
        if usage:
            yield self.chunk([], usage=self.usage(choices))
        yield "data: [DONE]\n\n"


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
