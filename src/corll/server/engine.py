"""The model behind the server: continuous batching across users' LoRA adapters, token by token.

    submit(GenerationRequest) -> Stream      # the whole interface the HTTP layer uses

One scheduler thread owns the model. Requests that arrive while it is busy join the
running batch at the next decoding step: each newcomer's prompt is prefilled (from the end of the
beginning its user's earlier prompts share with it, whose keys and values are cached: `prefix_cache.py`) and its
keys and values written into the batch's cache after the running rows (`corll.kv_rows`: rows join, grow
and leave without the others' cache being copied), and from then on every row advances one token per
step. Rows may belong to different users' adapters: every loaded adapter
sits in a slot of stacked LoRA matrices and each row gathers its own in one batched product per
layer (`lora_batch.py`), so nobody waits for an adapter switch and the cost of a step hardly grows
with the number of distinct adapters; adapters are read off this thread and the least recently used
slot reused beyond a budget (`adapters.py`). The base model itself carries no adapter machinery. A row
leaves the batch when it ends (EOS, a stop string, its own token limit) or its
client goes away, and the batch's last row takes its place in the cache at once.

Each request samples from its own `torch.Generator`, seeded by the request's
`seed` or, without one, by fresh entropy, so two users asking the same thing get
different drafts, and a seeded request gets the same text again; in fp32 alone or inside any batch (up to
floating-point ties), in bf16 (the model computes in bf16 throughout, `policy.load_frozen`) for the same batch,
as a bf16 product's rounding may depend on the batch's shape. Text streams out as it is decoded: a token
that ends inside a multi-byte character, or text that may be the start of a stop
string, is held back until it is certain.

On a GPU the model computes there while the scheduler's bookkeeping (token ids, masks, each
request's generator) stays on the CPU, so a seed draws from the same random stream on either. Beyond one
machine's worth of users, `corll serve --engine vllm` puts vLLM behind the same server (`vllm_engine.py`).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from transformers import Cache, DynamicCache

from corll.batches import left_pad
from corll.kv_rows import RowsCache
from corll.policy import GREEDY_BELOW, Policy, load_frozen
from corll.server.adapters import BASE_ADAPTER, AdapterCache
from corll.server.lora_batch import AdapterSlots
from corll.server.prefix_cache import PrefixCache
from corll.server.protocol import Delta, EngineError, GenerationRequest, Outbox, Stream, TokenLogprob, UserLimit


@dataclass
class _Row:
    """One choice being generated: its request, its tokens so far, and what it has already sent."""

    stream: Stream
    index: int
    generator: torch.Generator
    adapter: str
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the decoded text already sent
    logprob: float = 0.0
    pending: list[TokenLogprob] = field(default_factory=list)
    position: int = 0  # position id of the next token


@dataclass
class Work:
    """What the scheduler thread has done since the engine started, for /healthz and the serving benchmark:
    decoding steps and the rows they advanced, prefills and the rows they admitted, and the seconds of each
    phase (sampling: choosing tokens and sending text). Rows per step and the prefills' share of the time
    say how full the batch runs and what admitting newcomers costs."""

    steps: int = 0
    rows: int = 0
    prefills: int = 0
    prefill_rows: int = 0
    decode_s: float = 0.0
    prefill_s: float = 0.0
    sample_s: float = 0.0


class PolicyEngine:
    """The transformers engine: continuous batching, mixed adapters, streaming (see the module doc)."""

    def __init__(self, model: str, *, precision: str = "auto", seed: int = 0,
                 default_max_tokens: int = 128, max_tokens_limit: int = 1024, max_batch: int = 32,
                 batch_wait: float = 0.005, max_user_rows: int | None = None, max_user_requests: int = 16,
                 max_loaded_adapters: int = 32, max_lora_rank: int = 8, prefix_cache_mib: int = 256) -> None:
        if max_loaded_adapters < 1:
            raise ValueError(f"the adapter budget must be >= 1, not {max_loaded_adapters}")
        self.model_name = model
        self.default_max_tokens = default_max_tokens
        self.max_tokens_limit = max_tokens_limit  # a request may ask for less, never for more
        self.max_batch = max_batch  # rows decoded together; 1 serves one request at a time
        self.batch_wait = batch_wait  # how long an idle engine waits for company before starting
        # Fairness: one user's rows in the running batch (a request of more choices still runs alone), and
        # one user's requests waiting or running; beyond that, `submit` refuses (the HTTP layer's 429)
        self.max_user_rows = max_user_rows if max_user_rows is not None else max(1, max_batch // 2)
        self.limit = UserLimit(max_user_requests)
        self.prefixes = PrefixCache(prefix_cache_mib << 20)  # prompts' beginnings, per user and adapter
        self.running = 0  # rows in the batch now, and the most ever decoded together
        self.peak = 0
        self.work = Work()
        self.outbox = Outbox()  # a step's deltas, handed to the HTTP layer's loop together when it ends
        self._queue: queue.Queue[Stream | None] = queue.Queue()  # None: close
        # Every torch operation of the engine runs on its scheduler thread, the model's loading included: a second
        # thread that ran parallel work would hold OpenMP threads of its own, and with more of them than CPUs
        # libgomp makes every worker sleep between operations (`hardware.prepare_serving_threads`)
        loaded: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, args=(precision, seed, max_loaded_adapters, max_lora_rank,
                                                                  loaded), name="corll-engine", daemon=True)
        self._thread.start()
        loaded.result()  # the model's errors surface here

    def _serve(self, precision: str, seed: int, max_loaded_adapters: int, max_lora_rank: int,
               loaded: Future[None]) -> None:
        """The scheduler thread: load the model, then decode until closed."""
        try:
            self.policy: Policy = load_frozen(self.model_name, precision=precision, seed=seed)
            dtype = torch.bfloat16 if self.policy.precision == "bf16" else torch.float32
            self.slots = AdapterSlots(self.policy.model, max_loaded_adapters + 1, rank=max_lora_rank, dtype=dtype)
            self.adapters = AdapterCache(self.slots)  # read off this thread, least recently used slot reused
            self.eos = {self.policy.tokenizer.eos_token_id}
            self.context_length = getattr(self.policy.model.config, "max_position_embeddings", 2048)
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor, which raises it
            loaded.set_exception(exc)
            return
        loaded.set_result(None)
        self._run()

    # --- the interface -------------------------------------------------------------------------
    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.policy.prompt_ids(messages)

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None) -> Stream:
        stream = Stream(request, loop, on_close=self.limit.enter(request.user))
        self._queue.put(stream)
        return stream

    def health(self) -> dict:
        return {"engine": "transformers", "state": "ready" if self._thread.is_alive() else "stopped",
                "running": self.running, "adapters_loaded": len(self.adapters.attached),
                "adapter_bytes": self.slots.bytes_per_adapter, "prefix_cache_bytes": self.prefixes.bytes,
                "prompt_tokens_reused": self.prefixes.tokens_reused, "work": asdict(self.work)}

    def forget(self, user: str) -> None:
        """Drop what the engine holds of `user` ("tenant/user"): their prompts' cached blocks."""
        self.prefixes.forget(user)

    def close(self) -> None:
        """Stop: requests waiting or running end with an error, and the scheduler thread (with its OpenMP
        threads) exits."""
        self._queue.put(None)
        self._thread.join()

    # --- the scheduler ---------------------------------------------------------------------------
    def _run(self) -> None:
        rows: list[_Row] = []
        cache: RowsCache | None = None
        mask = torch.zeros(0, 0, dtype=torch.long)
        waiting: list[Stream] = []
        while True:
            # idle but for requests whose adapters are being read: look again shortly, without spinning
            arrived = self._arrivals(block=not rows and not waiting, pause=self.batch_wait if not rows else 0.0)
            waiting += [stream for stream in arrived if stream is not None]
            if any(stream is None for stream in arrived):  # closed: whatever is unfinished ends with an error
                for stream in {id(s): s for s in [r.stream for r in rows] + waiting}.values():
                    stream.push(EngineError("the engine was closed"))
                return
            admitted, waiting = self._admit(waiting, rows)
            try:
                rows, cache, mask = self._step(rows, cache, mask, admitted)
            except Exception as exc:  # noqa: BLE001 - a failed step fails its requests, never the server
                self.outbox.flush()  # what the step decoded before it failed, then the error
                for stream in {id(s): s for s in [r.stream for r in rows] + admitted}.values():
                    stream.push(exc)
                rows, cache, mask = [], None, torch.zeros(0, 0, dtype=torch.long)
            self.running = len(rows)

    def _arrivals(self, block: bool, pause: float = 0.0) -> list[Stream]:
        """New requests: wait for the first if idle, then whatever arrives within `batch_wait` (or, not
        blocking, whatever arrives within `pause`)."""
        arrived = []
        if not block and pause:
            try:
                arrived.append(self._queue.get(timeout=pause))
            except queue.Empty:
                pass
        if block:
            arrived.append(self._queue.get())
            deadline = self.batch_wait
            try:
                while len(arrived) < self.max_batch:
                    arrived.append(self._queue.get(timeout=deadline))
            except queue.Empty:
                pass
        while True:
            try:
                arrived.append(self._queue.get_nowait())
            except queue.Empty:
                return arrived

    @torch.no_grad()
    def _step(self, rows: list[_Row], cache: RowsCache | None, mask: torch.Tensor,
              admitted: list[Stream]) -> tuple[list[_Row], RowsCache | None, torch.Tensor]:
        """One decoding step for the running rows, with the admitted newcomers prefilled beside them."""
        keep = [i for i, r in enumerate(rows) if not r.stream.cancelled.is_set()]
        if len(keep) < len(rows):
            rows, cache, mask = self._select(rows, cache, mask, keep)
        logits = []
        started = time.perf_counter()
        if rows:
            step_ids = torch.tensor([[r.tokens[-1]] for r in rows])
            mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
            positions = torch.tensor([[r.position] for r in rows])
            logits.append(self._forward(step_ids, mask, positions, cache, [r.adapter for r in rows]))
            for r in rows:
                r.position += 1
            self.work.steps += 1
            self.work.rows += len(rows)
        decoded = time.perf_counter()
        self.work.decode_s += decoded - started
        if admitted:
            new_rows, new_cache, new_mask, new_logits = self._prefill(admitted)
            if new_rows:
                logits.append(new_logits)
                cache = RowsCache(self.max_batch) if cache is None else cache
                cache, mask = _stack(cache, mask, new_cache, new_mask)
                rows = rows + new_rows
            self.work.prefills += 1
            self.work.prefill_rows += len(new_rows)
        prefilled = time.perf_counter()
        self.work.prefill_s += prefilled - decoded
        if not rows:
            return [], None, torch.zeros(0, 0, dtype=torch.long)
        self.peak = max(self.peak, len(rows))
        self.running = len(rows)  # before any of this step's deltas leave
        finished = self._advance(rows, torch.cat(logits).float())
        self.outbox.flush()
        self.work.sample_s += time.perf_counter() - prefilled
        if finished:
            rows, cache, mask = self._select(rows, cache, mask, [i for i in range(len(rows)) if i not in finished])
        return rows, cache, mask

    def _admit(self, waiting: list[Stream], rows: list[_Row]) -> tuple[list[Stream], list[Stream]]:
        """Newcomers that fit beside the running rows (a request's n choices enter together), in arrival
        order; the rest wait. A user at their share of the batch (`max_user_rows`) waits without holding
        up anyone else: one user's flood of requests cannot fill the batch and stall the others. A request
        too big for the rows left holds up those behind it, so it is not starved by smaller ones."""
        busy = len(rows)
        mine: dict[str, int] = {}
        for row in rows:
            mine[row.stream.request.user] = mine.get(row.stream.request.user, 0) + 1
        in_use = {row.adapter for row in rows}
        admitted, rest, blocked = [], [], False
        for stream in waiting:
            request = stream.request
            held = mine.get(request.user, 0)
            if stream.cancelled.is_set():
                stream.push(None)
            elif held and held + request.n > self.max_user_rows:  # over the user's share: others go first
                rest.append(stream)
            elif not self._adapter_ready(stream, in_use):  # its adapter is being read: others go first
                if not stream.cancelled.is_set():
                    rest.append(stream)
            elif not blocked and busy + request.n <= max(self.max_batch, request.n):
                in_use.add(stream.adapter)
                admitted.append(stream)
                busy += request.n
                mine[request.user] = held + request.n
            else:
                blocked = True
                rest.append(stream)
        return admitted, rest

    def _adapter_ready(self, stream: Stream, in_use: set[str]) -> bool:
        """Whether the request's adapter is attached (asking the loader for it if not); a request whose
        adapter cannot be read fails alone (and counts as settled)."""
        if stream.adapter not in (None, BASE_ADAPTER) and stream.adapter not in self.adapters.attached:
            stream.adapter = None  # detached while the request waited for room in the batch
        if stream.adapter is None:
            model = stream.request.model
            try:
                stream.adapter = self.adapters.resolve(f"v{model.version_id}", model.adapter_path, in_use)
            except Exception as exc:  # noqa: BLE001 - an adapter that cannot load fails its own request only
                stream.push(exc)
                stream.cancelled.set()
                return False
        return stream.adapter is not None

    def _prefill(self, streams: list[Stream]) -> tuple[list[_Row], DynamicCache, torch.Tensor, torch.Tensor]:
        """The newcomers' prompts, each from the end of its cached beginning (`prefix_cache.py`); their full
        blocks are cached for the same user's next prompts."""
        rows, ids = [], []
        for stream in streams:
            generator = torch.Generator().manual_seed(stream.seed)
            for index in range(stream.request.n):
                rows.append(_Row(stream, index, generator, stream.adapter, position=len(stream.request.prompt_ids)))
                ids.append(stream.request.prompt_ids)
        if not rows:
            return [], None, torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0)
        scopes = [(r.stream.request.user, r.adapter) for r in rows]
        chains = [self.prefixes.find(scope, prompt) for scope, prompt in zip(scopes, ids)]
        cached = [len(chain) * self.prefixes.block for chain in chains]
        input_ids, mask = left_pad([prompt[n:] for prompt, n in zip(ids, cached)], self.policy.tokenizer.pad_token_id)
        positions = torch.tensor(cached)[:, None] + (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache()
        if any(cached):
            past, past_mask = self.prefixes.past(chains)
            for layer in range(past.shape[0]):
                cache.update(past[layer, 0], past[layer, 1], layer)  # blocks live where the model computes
            mask = torch.cat([past_mask, mask], dim=1)
        logits = self._forward(input_ids, mask, positions, cache, [r.adapter for r in rows])
        width = mask.shape[1]
        for row, (scope, prompt, chain) in enumerate(zip(scopes, ids, chains)):
            offset = width - len(prompt)  # where the row's first token sits (its prompt is right-aligned)
            self.prefixes.add(scope, prompt, chain, partial(_row_kv, cache, row, offset))
        return rows, cache, mask, logits

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: Cache, adapters: list[str]) -> torch.Tensor:
        """Last-position logits; each row through its own adapter (a batch of base-model rows through none)."""
        device = self.policy.device  # the scheduler's bookkeeping (ids, masks) stays on the CPU
        with self.policy.autocast(), self.slots.rows([self.adapters.slot(a) for a in adapters]):
            out = self.policy.model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                    position_ids=positions.to(device), cache=cache, use_cache=True,
                                    logits_to_keep=1)
        return out.logits[:, -1]

    def _advance(self, rows: list[_Row], logits: torch.Tensor) -> set[int]:
        """Sample each row's next token and send the text that became certain; returns the rows that ended."""
        logps = torch.log_softmax(logits, dim=-1)  # the model's own log π, before temperature and top-k/p
        tokens = self._sample(rows, logits)
        drawn = logps.gather(1, torch.tensor(tokens, device=logps.device)[:, None]).squeeze(1).tolist()
        finished = set()
        for i, (row, token) in enumerate(zip(rows, tokens)):
            request = row.stream.request
            row.logprob += drawn[i]
            reason = "stop" if token in self.eos else None
            if reason is None:
                row.tokens.append(token)
                if request.logprobs:
                    row.pending.append(self._token_logprob(token, logps[i], request.top_logprobs))
            text = self.policy.tokenizer.decode(row.tokens, skip_special_tokens=True)
            if reason is None and (stop_at := _first_stop(text, request.stop, row.sent)) is not None:
                text, reason = text[:stop_at], "stop"
            elif reason is None and len(row.tokens) >= request.max_tokens:
                reason = "length"
            if reason is not None:
                self._emit(row, text, reason)
                finished.add(i)
            elif not text.endswith("\ufffd"):  # else a multi-byte character is still incomplete
                self._emit(row, text[: len(text) - _held_back(text, request.stop)])
        return finished

    @staticmethod
    def _sample(rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Next tokens: temperature, then top-k, then top-p (as `generate` applies them), computed for the
        whole batch at once; the draw itself uses each request's own generator."""
        requests = [r.stream.request for r in rows]
        device = logits.device
        temperature = torch.tensor([max(q.temperature, GREEDY_BELOW) for q in requests], device=device)
        widest = max(q.top_k if 0 < q.top_k < logits.shape[1] else logits.shape[1] for q in requests)
        values, ids = (logits / temperature[:, None]).topk(widest)  # sorted, best first
        k = torch.tensor([q.top_k if q.top_k > 0 else widest for q in requests], device=device)
        values = values.masked_fill(torch.arange(widest, device=device)[None] >= k[:, None], float("-inf"))
        probs = torch.softmax(values, dim=-1)
        top_p = torch.tensor([q.top_p for q in requests], device=device)
        probs = probs.masked_fill(probs.cumsum(-1) - probs > top_p[:, None], 0.0)  # smallest set reaching top_p
        # each request's generator lives on the CPU, so a seed draws the same text on any device
        probs, ids = probs.cpu(), ids.cpu()
        return [int(ids[i, 0]) if q.temperature < GREEDY_BELOW
                else int(ids[i, torch.multinomial(probs[i], 1, generator=r.generator)])
                for i, (q, r) in enumerate(zip(requests, rows))]

    def _token_logprob(self, token: int, logps: torch.Tensor, top: int) -> TokenLogprob:
        decode = self.policy.tokenizer.decode
        best = torch.topk(logps, top) if top else None
        alternatives = () if best is None else tuple((decode([int(t)]), v.item())
                                                     for v, t in zip(best.values, best.indices))
        return TokenLogprob(decode([token]), logps[token].item(), alternatives)

    def _emit(self, row: _Row, text: str, reason: str | None = None) -> None:
        """Send the text beyond what was sent (with its tokens' logprobs); on the last delta, the totals."""
        if len(text) > row.sent or reason is not None:
            self.outbox.push(row.stream, Delta(row.index, text[row.sent:], tuple(row.pending), reason, row.logprob,
                                               len(row.tokens)))
            row.sent, row.pending = max(row.sent, len(text)), []
        if reason is not None:
            row.stream.finished += 1
            if row.stream.finished == row.stream.request.n:
                self.outbox.push(row.stream, None)

    @staticmethod
    def _select(rows: list[_Row], cache: RowsCache | None, mask: torch.Tensor,
                keep: list[int]) -> tuple[list[_Row], RowsCache | None, torch.Tensor]:
        """Only the rows at `keep` (in the order the cache leaves them), with the left padding no remaining
        row needs cut off."""
        if not keep:
            return [], None, torch.zeros(0, 0, dtype=torch.long)
        drop = int(mask[keep].any(0).long().argmax())
        order = cache.keep(keep, drop)
        return [rows[i] for i in order], cache, mask[order, drop:]


def _stack(cache: RowsCache, mask: torch.Tensor, other: Cache,
           other_mask: torch.Tensor) -> tuple[RowsCache, torch.Tensor]:
    """Two batches as one: `other`'s rows after `cache`'s, the narrower left-padded (masked out)."""
    width = max(mask.shape[1], other_mask.shape[1])
    cache.append(other)
    return cache, torch.cat([_pad_left(mask, width), _pad_left(other_mask, width)])


def _row_kv(cache: Cache, row: int, offset: int, start: int, end: int) -> torch.Tensor:
    """One row's keys and values at positions offset+start..offset+end, every layer:
    [layers, 2, heads, end - start, dim]."""
    return torch.stack([torch.stack([layer.keys[row, :, offset + start:offset + end],
                                     layer.values[row, :, offset + start:offset + end]]) for layer in cache.layers])


def _pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([mask.new_zeros(mask.shape[0], width - mask.shape[1]), mask], dim=1)


def _first_stop(text: str, stops: tuple[str, ...], sent: int) -> int | None:
    """Where the earliest stop string begins, searching only where a new one can be."""
    found = [i for s in stops if (i := text.find(s, max(0, sent - len(s) + 1))) >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could still become a stop string."""
    return max((n for s in stops for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])),
               default=0)

