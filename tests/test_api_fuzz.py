"""Fuzz the service from its own OpenAPI spec (schemathesis): whatever arrives, no 5xx."""

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from corll.server.app import create_app
from corll.server.engine import PolicyEngine
from corll.store import Store

_folder = Path(tempfile.mkdtemp(prefix="corll-fuzz-"))
STORE = Store(f"sqlite:///{_folder / 'fuzz.db'}")
KEY = STORE.create_api_key("acme", "fuzzer")
APP = create_app(STORE, PolicyEngine("tiny", STORE, default_max_tokens=4, max_tokens_limit=4))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_server_fail(case):
    for headers in ({"Authorization": f"Bearer {KEY}"}, {}):
        response = case.call(headers=headers)
        assert response.status_code < 500, (response.status_code, response.text[:300])
