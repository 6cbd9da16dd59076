"""Schemathesis over the live OpenAPI spec: generated requests to every operation, valid and not,
never get a server error, and every error response is problem+json."""

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from service_helpers import make_model_root
from service_helpers import settings as service_settings

from service.store.db import Database
from service.server import BackgroundServer, build_app
from service.store.tokens import create_token

schemathesis = pytest.importorskip("schemathesis")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    s = service_settings(tmp, make_model_root(tmp), max_body_bytes=256 * 1024)
    db = Database(s.resolved_database_url())
    db.migrate()
    _, secret = create_token(db, "fuzz")
    server = BackgroundServer(build_app(s, dispatcher=False, db=db)).start()  # jobs are queued, never run
    yield server.url, secret
    server.stop()


def test_no_server_errors(live):
    url, secret = live
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 8
    failures = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for op in operations:
            @settings(max_examples=25, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy())
            def check(case):
                kwargs = case.as_transport_kwargs(base_url=url)
                headers = {**(kwargs.get("headers") or {}), "Authorization": f"Bearer {secret}"}
                r = client.request(kwargs["method"], kwargs["url"], headers=headers, params=kwargs.get("params"),
                                   content=kwargs.get("data") if isinstance(kwargs.get("data"), (bytes, str)) else None,
                                   json=kwargs.get("json"))
                if r.status_code >= 500 or (r.status_code >= 400 and
                                            not r.headers.get("content-type", "").startswith("application/problem+json")):
                    failures.append((op.label, r.status_code, r.text[:300], kwargs.get("json") or kwargs.get("params")))
            check()
    assert not failures, failures[:5]
