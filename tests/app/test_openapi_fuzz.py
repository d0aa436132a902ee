"""Schemathesis over the OpenAPI document of the real service (tiny encoder, real index): every
operation, valid and invalid inputs; no 5xx, every status, content type and body as documented."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from app_fixtures import API_KEY, make_settings, running_server
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 8  # per operation and mode: ~200 requests in all, well under a minute


@pytest.fixture(scope="module")
def base_url(built_home: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import shutil

    home = tmp_path_factory.mktemp("fuzz") / "home"
    shutil.copytree(built_home, home)
    # small upload cap so that fuzzed bodies also exercise the 413 path; no worker (jobs just queue)
    app_settings = make_settings(home, model=f"local-dir:{tiny_model_dir}", max_upload_bytes=256 * 1024)
    with running_server(create_app(app_settings)) as url:
        yield url


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_conforms_to_the_openapi_document(base_url: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/api/search", "/api/search/image", "/api/figures/{figure_id}", "/api/figures/{figure_id}/similar",
        "/api/articles", "/api/articles/{article_id}", "/api/jobs", "/api/jobs/{job_id}", "/readyz",
    }
    for operation in operations:
        _fuzz(operation, base_url, mode)


def _fuzz(operation: schemathesis.APIOperation, base_url: str, mode: GenerationMode) -> None:
    """Run ``EXAMPLES`` generated cases against one operation and check each answer."""
    writes = operation.path == "/api/articles" and operation.method.upper() == "POST"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        if writes:
            case.headers = {**(case.headers or {}), "X-API-Key": API_KEY}
        case.call_and_validate(base_url=base_url, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        # negative mode: an operation without parameters or body (e.g. /healthz) has nothing to break
        if mode is not GenerationMode.NEGATIVE or _has_inputs(operation):
            raise


def _has_inputs(operation: schemathesis.APIOperation) -> bool:
    """True when the operation takes parameters or a body that invalid input could be made of."""
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))
