"""Schemathesis over the live OpenAPI spec, bounded (25 examples per operation, well under a minute):
generated requests to every operation, valid and not, never get a server error, every error response
is problem+json, and the responses conform to the spec (status codes, content types, bodies, headers,
Allow on 405; schema-invalid requests refused)."""

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from service_helpers import make_model_root
from service_helpers import settings as service_settings

from service.store.db import Database
from service.server import BackgroundServer, build_app
from service.store.tokens import create_token

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import (allow_header_conformance, content_type_conformance,  # noqa: E402
                                 negative_data_rejection, not_a_server_error, response_headers_conformance,
                                 response_schema_conformance, status_code_conformance)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, allow_header_conformance, negative_data_rejection]


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
    for op in operations:
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {secret}"}
            r = case.call(base_url=url, timeout=10)
            if r.status_code >= 500 or (r.status_code >= 400 and
                                        not (r.headers.get("content-type") or [""])[0].startswith("application/problem+json")):
                failures.append((op.label, r.status_code, r.text[:300]))
            try:
                case.validate_response(r, checks=CHECKS)
            except Exception as exc:  # schemathesis' FailureGroup: the spec and the server disagree
                for failure in getattr(exc, "exceptions", [exc]):
                    failures.append((op.label, r.status_code, type(failure).__name__, str(failure)[:300]))
        check()
    assert not failures, failures[:5]
