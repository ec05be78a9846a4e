"""The OpenAPI document of every HTTP endpoint, served at ``/api/openapi.json``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from intake.operators import CallLog
from intake.sources.telephony.base import Route, TelephonyAdapter

_ERROR = {"$ref": "#/components/schemas/Error"}
_TOO_LARGE = {
    "description": "The body is over [http] max_body_size",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _webhook_operation(adapter: TelephonyAdapter, route: Route) -> dict[str, Any]:
    path = route.path
    form = {"type": "object", "additionalProperties": {"type": "string"}}
    answered = {
        "description": "Stored (or a probe answered); the provider's expected answer",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
    refused = _json(
        _ERROR,
        "Not an event of this provider, or a value no field of the store can hold; "
        "the reason says why",
    )
    operation: dict[str, Any] = {
        "summary": route.summary,
        "tags": ["telephony"],
        "operationId": f"{adapter.name}_{re.sub(r'[^a-z0-9]+', '_', path.lower()).strip('_')}",
        "description": adapter.description,
        # A probe (a URL check) keeps nothing and checks no signature.
        "responses": {"200": answered, "422": refused},
    }
    if route.consumes:
        operation["responses"] |= {
            "401": _json(_ERROR, "Not signed or authorised by the provider"),
            "413": _TOO_LARGE,
            "500": _json(_ERROR, "The event could not be stored (a fault of ours, logged)"),
            "503": _json(_ERROR, "Storage unavailable; the provider should retry"),
        }
        operation["requestBody"] = {
            "required": True,
            "content": {
                media: {"schema": {"type": "object"} if media == "application/json" else form}
                for media in route.consumes
            },
        }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": True, "schema": {"type": "string"}}
        for name in route.query
    ]
    parameters += [
        {
            "name": name,
            "in": "header",
            "required": True,
            "description": "The provider's signature",
            "schema": {"type": "string"},
        }
        for name in route.headers
    ]
    if parameters:
        operation["parameters"] = parameters
    return operation


def openapi_document(adapters: Sequence[TelephonyAdapter]) -> dict[str, Any]:
    call_log = CallLog.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = call_log.pop("$defs", {})
    schemas["CallLog"] = call_log
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    }
    schemas["FieldErrors"] = {
        "type": "object",
        "required": ["errors"],
        "properties": {"errors": {"type": "object", "additionalProperties": {"type": "string"}}},
    }
    registered = {
        "type": "object",
        "required": ["number", "created"],
        "properties": {"number": {"type": "string"}, "created": {"type": "boolean"}},
    }
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "operationId": "healthz",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"type": "string"}},
                        },
                        "The daemon answers",
                    )
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document")},
            }
        },
        "/api/v1/calls": {
            "post": {
                "summary": "An operator logs what a caller said",
                "operationId": "log_call",
                "tags": ["operators"],
                "security": [{"operator": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/CallLog"}}
                    },
                },
                "responses": {
                    "200": _json(registered, "Added to the ticket named"),
                    "201": _json(registered, "A ticket registered"),
                    "401": _json(_ERROR, "No valid operator token"),
                    "413": _TOO_LARGE,
                    "422": _json(
                        {"$ref": "#/components/schemas/FieldErrors"},
                        "Each field that is wrong, and why",
                    ),
                },
            }
        },
    }
    for adapter in adapters:
        for route in adapter.routes:
            paths.setdefault(route.path, {})[route.method.lower()] = _webhook_operation(
                adapter, route
            )
    return {
        "openapi": "3.1.0",
        "info": {"title": "OmniVOX Intake", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"operator": {"type": "http", "scheme": "bearer"}},
        },
    }
