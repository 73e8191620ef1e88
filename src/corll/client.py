"""The feedback SDK: send what users did with a completion back to a corll server.

Completions themselves go through the official `openai` client pointed at the
server (`OpenAI(base_url="http://host:port/v1", api_key=KEY)`); this client
carries the feedback:

    client = corll.Client("http://localhost:8000", api_key=KEY)
    client.edit(completion.id, "the text the user kept")
    client.react(completion.id, "love")

`AsyncClient` has the same methods as coroutines. A refused request raises
`FeedbackError` with the server's message and status; nothing was recorded then.
Every feedback call carries a fresh `Idempotency-Key` and is retried on a
connection error or a 503 (up to `retries` times, backing off): a retry of an
event the server had already committed returns the first answer, so a dropped
connection never doubles an edit.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx

DEFAULT_TIMEOUT = 30.0
RETRIES = 4
BACKOFF = 0.25  # seconds before the first retry, doubling


class FeedbackError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


def _check(response: httpx.Response) -> dict:
    if response.is_success:
        return response.json()
    try:
        body = response.json()
        message = body["error"]["message"] if "error" in body else json_detail(body)
    except (ValueError, KeyError, TypeError):
        message = response.text
    raise FeedbackError(response.status_code, message)


def json_detail(body: dict) -> str:
    """FastAPI's validation errors as one line: 'field: problem; …'."""
    detail = body.get("detail")
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
    return str(detail)


def _body(completion_id: str, choice: int, **signal: str) -> dict:
    return {"completion_id": completion_id, **({"choice": choice} if choice else {}), **signal}


def _base(base_url: str) -> str:
    return base_url.rstrip("/").removesuffix("/v1")


Outcome = httpx.Response | httpx.TransportError


class Delivery:
    """The retry policy of one feedback event, shared by both clients: the same Idempotency-Key on every
    try; a connection error or a 503 is tried again after a doubling pause, up to `retries` times."""

    def __init__(self, retries: int) -> None:
        self.headers = {"Idempotency-Key": str(uuid.uuid4())}
        self.retries, self.tries = retries, 0

    def pause_after(self, outcome: Outcome) -> float | None:
        """Seconds to wait before trying again, or None when this outcome is the answer."""
        self.tries += 1
        retryable = isinstance(outcome, httpx.TransportError) or outcome.status_code == 503
        return BACKOFF * 2 ** (self.tries - 1) if retryable and self.tries <= self.retries else None

    @staticmethod
    def answer(outcome: Outcome) -> dict:
        if isinstance(outcome, Exception):
            raise outcome
        return _check(outcome)


class Client:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = DEFAULT_TIMEOUT, retries: int = RETRIES) -> None:
        self.http = httpx.Client(base_url=_base(base_url), headers={"Authorization": f"Bearer {api_key}"},
                                 timeout=timeout)
        self.retries = retries

    def edit(self, completion_id: str, text: str, *, choice: int = 0) -> dict:
        """Record that the user kept `text` instead of the completion (an edit: a preference ȳ ≻ y);
        `choice` picks one of an n > 1 completion's choices."""
        return self._send(_body(completion_id, choice, edit=text))

    def react(self, completion_id: str, reaction: str, *, choice: int = 0) -> dict:
        """Record a reaction: 'love', 'like' or 'dislike'."""
        return self._send(_body(completion_id, choice, reaction=reaction))

    def _send(self, body: dict) -> dict:
        delivery = Delivery(self.retries)
        while True:
            try:
                outcome: Outcome = self.http.post("/v1/feedback", json=body, headers=delivery.headers)
            except httpx.TransportError as exc:
                outcome = exc
            if (pause := delivery.pause_after(outcome)) is None:
                return delivery.answer(outcome)
            time.sleep(pause)

    def interactions(self, *, limit: int = 50, before: str | None = None) -> dict:
        params = {"limit": limit, **({"before": before} if before else {})}
        return _check(self.http.get("/v1/interactions", params=params))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = DEFAULT_TIMEOUT, retries: int = RETRIES) -> None:
        self.http = httpx.AsyncClient(base_url=_base(base_url), headers={"Authorization": f"Bearer {api_key}"},
                                      timeout=timeout)
        self.retries = retries

    async def edit(self, completion_id: str, text: str, *, choice: int = 0) -> dict:
        return await self._send(_body(completion_id, choice, edit=text))

    async def react(self, completion_id: str, reaction: str, *, choice: int = 0) -> dict:
        return await self._send(_body(completion_id, choice, reaction=reaction))

    async def _send(self, body: dict) -> dict:
        delivery = Delivery(self.retries)
        while True:
            try:
                outcome: Outcome = await self.http.post("/v1/feedback", json=body, headers=delivery.headers)
            except httpx.TransportError as exc:
                outcome = exc
            if (pause := delivery.pause_after(outcome)) is None:
                return delivery.answer(outcome)
            await asyncio.sleep(pause)

    async def interactions(self, *, limit: int = 50, before: str | None = None) -> dict:
        params = {"limit": limit, **({"before": before} if before else {})}
        return _check(await self.http.get("/v1/interactions", params=params))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
