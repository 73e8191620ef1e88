from collections.abc import Callable

import pytest
import torch

from corll.policy import LoraSettings, SamplingConfig, load_policy
from corll.simulate import SimulationConfig


@pytest.fixture
def policy():
    """A fresh tiny LoRA policy (random 2-layer Llama, character tokenizer), in fp32 on every CPU: the tests
    compare its numbers with hand computations at fp32 tolerances, where `auto` would pick bf16 on bf16 CPUs."""
    torch.manual_seed(0)
    return load_policy("tiny", lora=LoraSettings(), sampling=SamplingConfig(max_new_tokens=12), precision="fp32")


def tiny_config(**overrides) -> SimulationConfig:
    """A fast simulation on the tiny model and the synthetic task."""
    settings = dict(task="synthetic", model="tiny", precision="fp32", rounds=10, k=4, l=8, batch_size=8, lr=1e-2,
                    max_new_tokens=16, eval_every=5, eval_prompts=16, eval_samples=2, checkpoint_every=5)
    settings.update(overrides)
    return SimulationConfig(**settings)


def without_time(records: list[dict]) -> list[dict]:
    """Metrics records without their timings, the one part a replayed run cannot reproduce."""
    return [{k: v for k, v in r.items() if k not in ("wall_time", "eval_time")} for r in records]


class Interrupted(Exception):
    """Where `interrupt_at` kills a run."""


def interrupt_at(run: Callable[[Callable], object], *where) -> None:
    """Call `run(progress)` and kill it as its progress callback first reports `where` (the callback's leading
    arguments, e.g. an algorithm and a round, or an arm, a seed and a round), as a killed process would die:
    the work before it finished and the run in progress keeps its last checkpoint."""
    def progress(*reported):
        if reported[:len(where)] == where:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(progress)


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server: $CORLL_TEST_POSTGRES_URL (CI starts one), else a throw-away one started here."""
    import os
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    if url := os.environ.get("CORLL_TEST_POSTGRES_URL"):
        yield url
        return
    script = Path(__file__).parent.parent / "scripts" / "postgres.sh"
    folder = Path(tempfile.mkdtemp(prefix="corll-postgres-"))  # outside pytest's private tmp: the server's user reads it
    folder.chmod(0o777)
    started = subprocess.run([str(script), "start", str(folder), "55433"], capture_output=True, text=True)
    if started.returncode != 0:
        pytest.fail(f"could not start PostgreSQL for the store tests (install Debian's postgresql): {started.stderr}")
    yield started.stdout.strip().splitlines()[-1]
    subprocess.run([str(script), "stop", str(folder)], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """An empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'corll.db'}"
    from sqlalchemy import create_engine, text

    url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return url


def vllm_test_model(folder):
    """A tiny Llama saved as a model directory that both engines can serve: vLLM's CPU attention needs a
    head size of 32 or more (the tiny test model's is 16), so two heads of 32 over the same width."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from corll.models import tiny_tokenizer

    if (folder / "config.json").exists():
        return folder
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def random_adapter(folder, model: str = "tiny", *, seed: int = 0, r: int = 8, alpha: int = 16,
                   targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"), std: float = 0.5) -> str:
    """A LoRA adapter of `model` with random non-zero weights (B drawn too, so it changes the output),
    saved in peft's format, as a trained version would be."""
    policy = load_policy(model, lora=LoraSettings(r=r, alpha=alpha, target_modules=targets), precision="fp32")
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_" in name:
                p.normal_(0, std)
    policy.model.save_pretrained(folder)
    return str(folder)
