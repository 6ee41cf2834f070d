"""A schemathesis run against the app: every operation, valid and invalid inputs generated from
the OpenAPI document, with a fixed seed and few examples so that it fits CI.

No answer may be a 5xx, and each must match the document: a documented status code, its
content type and its schema.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from tests.api.helpers import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

#: Examples per operation and mode (valid, invalid): about a minute in all on SQLite.
EXAMPLES = 20


@pytest.fixture
def api_schema(make_client, database):
    if database.backend != "sqlite":
        pytest.skip("one backend is enough for the fuzz; the rules are the API's")
    app = make_client(api_token=TOKEN).app
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_answer_is_a_server_error_or_off_the_document(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    pairs = [(operation, mode) for operation in operations for mode in modes]
    strategy = st.sampled_from(pairs).flatmap(lambda pair: pair[0].as_strategy(pair[1]))

    # derandomize: the same examples on every run (a fixed seed, derived from the test).
    @settings(
        max_examples=EXAMPLES * len(pairs),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def check(case):
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    check()
