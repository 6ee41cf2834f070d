"""The OpenAPI document, with the batch body described by the spec's own models.

``POST /v1/batches`` takes its body as a plain object (so that validation, and the error paths,
are ``models.spec.parse_batch``'s); this puts the schema of ``BatchSpec`` on the docs page.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from models.spec import BatchSpec

REF_TEMPLATE = "#/components/schemas/{model}"


def _with_batch_schema(schema: dict[str, Any]) -> dict[str, Any]:
    batch = BatchSpec.model_json_schema(ref_template=REF_TEMPLATE)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(batch.pop("$defs", {}))
    components["BatchSpec"] = batch
    body = schema["paths"]["/v1/batches"]["post"]["requestBody"]["content"]["application/json"]
    examples = body["schema"].get("examples")
    body["schema"] = {"$ref": REF_TEMPLATE.format(model="BatchSpec")}
    if examples:
        body["schema"]["examples"] = examples
    return schema


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json`` and ``/docs``) describe the batch."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_batch_schema(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi
