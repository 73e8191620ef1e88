"""What both engines promise beyond the OpenAI surface: a promoted version serves its user's next request,
a forgotten user's adapter leaves the engine, a dead vLLM answers 503 and comes back; and how `auto`
chooses."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from corll.server.engines import choose_engine
from corll.store import forget
from tests.conftest import random_adapter
from tests.server.test_app import openai_client

TENANT = "engines"  # this module's users, apart from the shared servers' `acme` (tests/server/conftest.py)


def ask(server, key, model, **kwargs):
    return openai_client(server, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello there."}], max_tokens=6, seed=5, **kwargs)


def test_a_promoted_version_serves_its_users_next_request_within_five_seconds(served, tmp_path):
    model, server, store = served.model, served.server, served.store
    key = store.create_api_key(TENANT, "promoted")
    before = ask(server, key, model)
    path = random_adapter(tmp_path / "promoted", model, seed=1)
    promoted_at = time.monotonic()
    version = store.add_policy_version(TENANT, "promoted", path)
    after = ask(server, key, model)
    assert time.monotonic() - promoted_at < 5.0
    assert after.system_fingerprint == f"corll-policy-{version}" and before.system_fingerprint != after.system_fingerprint
    assert after.choices[0].message.content != before.choices[0].message.content  # its weights answer


def test_a_forgotten_users_adapter_leaves_the_engine(served, tmp_path):
    kind, model, engine, server, store = served.kind, served.model, served.engine, served.server, served.store
    key = store.create_api_key(TENANT, "leaving")
    other = store.create_api_key(TENANT, "staying")
    version = store.add_policy_version(TENANT, "leaving", random_adapter(tmp_path / "leaving", model, seed=2))
    ask(server, key, model)
    loaded = engine.adapters.loaded if kind == "vllm" else engine.adapters.attached
    assert f"v{version}" in loaded
    forget(store, TENANT, "leaving")
    ask(server, other, model)  # any next request: the engine notices the adapter's folder is gone
    if kind == "vllm":
        assert f"v{version}" not in engine.adapters.loaded
        served = httpx.get(f"{engine.url}/v1/models").json()["data"]
        assert f"v{version}" not in [m["id"] for m in served]  # nothing of the user left inside vLLM
    with pytest.raises(Exception):
        ask(server, key, model)  # and the user's key is gone with them


def test_a_forgotten_users_cached_prompts_are_never_reached_again(served):
    """corll's engine drops the user's cached prompt blocks; vLLM's requests of the user carry a new cache
    salt (its prefix cache is shared by tokens, so the salt keeps users apart)."""
    kind, model, engine, server, store = served.kind, served.model, served.engine, served.server, served.store
    key = store.create_api_key(TENANT, "cached")
    admin = store.create_api_key(TENANT, "ops", admin=True)
    system = "You are a careful assistant who writes short, friendly answers. " * 3
    reused = engine.prefixes.tokens_reused if kind == "corll" else 0
    for _ in range(2):
        openai_client(server, key).chat.completions.create(
            model=model, messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hi."}],
            max_tokens=2)
    if kind == "vllm":
        salt = engine.cache_salt(f"{TENANT}/cached")
        assert salt != engine.cache_salt(f"{TENANT}/other") and len(salt) == 43
    else:
        assert any(scope[0] == f"{TENANT}/cached" for scope in engine.prefixes.roots)
        assert engine.prefixes.tokens_reused - reused >= 16  # the second request began from the first's blocks
    gone = httpx.delete(f"{server.url}/v1/users/cached", headers={"Authorization": f"Bearer {admin}"})
    assert gone.status_code == 200
    if kind == "vllm":
        assert engine.cache_salt(f"{TENANT}/cached") != salt
    else:
        assert not any(scope[0] == f"{TENANT}/cached" for scope in engine.prefixes.roots)


def test_a_dead_vllm_answers_503_and_is_restarted(vllm_served):  # corll's engine has no child process to lose
    """The session's vLLM is killed; the tests after this one meet the process that replaced it."""
    model, engine, server, store = vllm_served.model, vllm_served.engine, vllm_served.server, vllm_served.store
    key = store.create_api_key(TENANT, "patient")
    os.killpg(engine.process._process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while engine.process.ready.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    health = httpx.get(f"{server.url}/healthz")
    assert health.status_code == 503 and "restarting" in health.json()["error"]["message"]
    with pytest.raises(Exception) as refused:
        ask(server, key, model)
    assert getattr(refused.value, "status_code", None) == 503
    assert engine.process.ready.wait(180)  # restarted
    assert ask(server, key, model).choices[0].finish_reason in ("length", "stop")
    assert httpx.get(f"{server.url}/healthz").json()["engine"]["restarts"] == 1


def test_auto_picks_vllm_on_a_gpu_where_installed_and_corlls_engine_on_a_cpu():
    assert choose_engine("auto", vllm_installed=True, cuda=True)[0] == "vllm"
    assert choose_engine("auto", vllm_installed=False, cuda=True) == (
        "corll", "auto: a CUDA GPU but vLLM is not installed (scripts/setup-vllm.sh installs it)")
    assert choose_engine("auto", vllm_installed=True, cuda=False)[0] == "corll"
    assert choose_engine("vllm", vllm_installed=True, cuda=False) == ("vllm", "asked for with --engine")
    with pytest.raises(ValueError, match="setup-vllm.sh"):
        choose_engine("vllm", vllm_installed=False, cuda=False)
    with pytest.raises(ValueError, match="--engine must be one of auto, corll, vllm"):
        choose_engine("tgi", vllm_installed=True, cuda=True)


def test_vllm_computes_on_both_cpus_of_a_two_cpu_machine_unless_the_operator_says_otherwise(monkeypatch):
    from corll.server import vllm_engine
    from corll.server.vllm_engine import VLLMLaunch

    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    monkeypatch.setattr(vllm_engine, "available_cpus", lambda: 2)
    assert VLLMLaunch().environment()["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert VLLMLaunch(reserved_cpus=1).environment()["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
    monkeypatch.setattr(vllm_engine, "available_cpus", lambda: 16)
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in VLLMLaunch().environment()  # vLLM's own choice, unmeasured
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")
    monkeypatch.setattr(vllm_engine, "available_cpus", lambda: 2)
    assert VLLMLaunch().environment()["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"  # the operator's own setting wins
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    assert VLLMLaunch(kv_cache_gib=1).environment()["VLLM_CPU_KVCACHE_SPACE"] == "3"
