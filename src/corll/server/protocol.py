"""What the HTTP layer and an engine share: the request, the stream of text it answers with, and the
`Engine` protocol. Torch-free, so the HTTP layer (and anything that only speaks to an engine) imports no
model code; `engine.py` is the transformers engine behind it.
"""

from __future__ import annotations

import asyncio
import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

TOP_K = 50  # corll samples with top-k 50 (SamplingConfig's default), whichever engine serves


@dataclass(frozen=True)
class ServedModel:
    """What a request's `model` names: the base model, the caller's active version, or a pinned one."""

    version_id: int | None  # None: the base model
    adapter_path: str | None


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    model: ServedModel
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = TOP_K
    max_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token, with `logprobs`
    user: str = ""  # whose request ("tenant/user"): the engine shares its rows fairly between users


class Overloaded(Exception):
    """The requesting user already has as many requests waiting or running as one user may."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineError(Exception):
    """The engine could not run a request: `status` is the HTTP answer (503 while the engine is down or
    restarting, 4xx for a request it refuses), `kind` OpenAI's error type."""

    def __init__(self, message: str, status: int = 503, kind: str = "unavailable") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


class UserLimit:
    """Fairness at the door: at most `limit` requests of one user waiting or running in an engine."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, user: str) -> Callable[[], None]:
        """Count a request of `user`, or raise Overloaded; returns what to call once it has ended."""
        with self._lock:
            if self._open.get(user, 0) >= self.limit:
                raise Overloaded(f"{self.limit} requests of this user are already waiting or running; "
                                 "retry when one has finished", retry_after=1.0)
            self._open[user] = self._open.get(user, 0) + 1
        return lambda: self._leave(user)

    def _leave(self, user: str) -> None:
        with self._lock:
            self._open[user] -= 1
            if not self._open[user]:
                del self._open[user]


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """New text of one choice; `finish_reason` is set on the choice's last delta."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: str | None = None
    logprob: float = 0.0  # on the last delta: log π of the choice's generated tokens
    tokens: int = 0  # on the last delta: how many tokens the choice generated


@dataclass
class Choice:
    text: str = ""
    logprob: float = 0.0  # log π(tokens | prompt) of what was generated
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


class Stream:
    """A request's deltas as they are decoded; iterate them (sync or async) or wait for the whole answer.

    The scheduler thread pushes; a consumer on an asyncio loop gets the deltas through that loop."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None,
                 on_close: Callable[[], None] = lambda: None) -> None:
        self.request = request
        self._on_close, self._closed = on_close, threading.Event()
        self.seed = request.seed if request.seed is not None else secrets.randbits(31)
        self.cancelled = threading.Event()
        self.prompt_tokens = len(request.prompt_ids)
        self._loop = loop
        self._async: asyncio.Queue | None = asyncio.Queue() if loop else None
        self._sync: queue.Queue = queue.Queue()
        self.finished = 0  # choices done (the scheduler's count)
        self.adapter: str | None = None  # the adapter its rows compute with, once attached (the engine's)

    def push(self, item: Delta | BaseException | None) -> None:
        """Called by the scheduler: a delta, an error, or None once every choice has finished."""
        if (loop := self.accept(item)) is not None:
            loop.call_soon_threadsafe(self.arrive, item)

    def accept(self, item: Delta | BaseException | None) -> asyncio.AbstractEventLoop | None:
        """The scheduler's half of `push`: the request stops counting against its user as soon as it ends, and
        a consumer without a loop gets the item at once; returns the loop on which `arrive(item)` must run
        (None: delivered already), so a caller may hand over many streams' items in one call (`Outbox`)."""
        if item is None or isinstance(item, BaseException):
            self._close()
        if self._loop is None:
            self._sync.put(item)
        return self._loop

    def arrive(self, item: Delta | BaseException | None) -> None:
        """The loop's half of `push`: run on the consumer's event loop."""
        self._async.put_nowait(item)

    def cancel(self) -> None:
        """The client went away: the scheduler drops this request's rows at its next step."""
        self.cancelled.set()
        self._close()

    def _close(self) -> None:
        """The request no longer counts against its user (called once, however it ends)."""
        if not self._closed.is_set():
            self._closed.set()
            self._on_close()

    def __iter__(self) -> Iterator[Delta]:
        while (item := self._sync.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def deltas(self, poll: float = 0.5):
        """Async iteration; `poll` bounds how long a cancelled consumer keeps the slot."""
        while True:
            try:  # a step's deltas arrive together: take those already here without a timer each
                item = self._async.get_nowait() if not self._async.empty() else \
                    await asyncio.wait_for(self._async.get(), poll)
            except TimeoutError:
                if self.cancelled.is_set():
                    return
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    @staticmethod
    def collect(deltas, n: int) -> list[Choice]:
        choices = [Choice() for _ in range(n)]
        for d in deltas:
            add_delta(choices[d.index], d)
        return choices

    def result(self) -> list[Choice]:
        """Block until every choice has finished (for callers without an event loop)."""
        return self.collect(self, self.request.n)


def add_delta(choice: Choice, delta: Delta) -> None:
    choice.text += delta.text
    choice.logprobs.extend(delta.logprobs)
    if delta.finish_reason:
        choice.finish_reason, choice.logprob, choice.tokens = delta.finish_reason, delta.logprob, delta.tokens


class Engine(Protocol):
    """What the HTTP layer needs from an engine (the transformers engine, `engine.py`, or vLLM's, `vllm_engine.py`):
    the served model's name, its limits, the chat prompt's token ids, and a stream of text per request."""

    model_name: str
    default_max_tokens: int  # a request's length cap when it names none
    max_tokens_limit: int  # the most a request may ask for
    context_length: int  # prompt plus response, in tokens
    running: int  # sequences being decoded now (for /metrics)

    def prompt_ids(self, messages: list[dict]) -> list[int]: ...

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None) -> Stream: ...

    def forget(self, user: str) -> None:
        """Drop whatever the engine keeps of `user` ("tenant/user") beyond their requests, once they are forgotten."""
        ...

    def health(self) -> dict:
        """What /healthz reports of the engine: at least `engine` (its kind) and `state` ("ready", or
        "restarting" while it cannot take requests: /healthz then answers 503)."""
        ...

    def close(self) -> None:
        """Stop serving and release what the engine holds (its thread, or the vLLM process it started)."""
        ...


class Outbox:
    """A decoding step's deltas, handed to each consumer's event loop in one call once the step is done.

    Handing each delta over on its own (`Stream.push`) wakes the HTTP layer's loop once per token of every
    row, and on a machine whose cores the decoding threads keep busy a wake-up preempts one of them while the
    others wait for it at the operation's end: on a two-core Xeon, another process taking 0.3 ms of CPU every
    2 ms cut the engine's throughput by a third (every 5 ms: by 4%). One call per loop per step wakes it once
    for the whole batch."""

    def __init__(self) -> None:
        self._held: dict[asyncio.AbstractEventLoop, list[tuple[Stream, Delta | BaseException | None]]] = {}

    def push(self, stream: Stream, item: Delta | BaseException | None) -> None:
        """As `stream.push(item)`, delivered at the next `flush` (at once to a consumer without a loop)."""
        if (loop := stream.accept(item)) is not None:
            self._held.setdefault(loop, []).append((stream, item))

    def flush(self) -> None:
        """Deliver what is held, in the order it was pushed."""
        held, self._held = self._held, {}
        for loop, items in held.items():
            loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[Stream, Delta | BaseException | None]]) -> None:
    for stream, item in items:
        stream.arrive(item)
