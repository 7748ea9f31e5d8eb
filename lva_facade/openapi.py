"""The OpenAPI 3 document, generated from the same route table the transcoder serves."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from lva_common.errors import REGISTRY
from lva_facade.jsoncodec import declared_bounds, enum_choices, is_repeated, json_name
from lva_facade.request_id import HEADER, PATTERN
from lva_facade.routes import Route, is_required

_F = FieldDescriptor
_INTEGER_FORMATS = {
    _F.TYPE_INT32: ("int32", None),
    _F.TYPE_SINT32: ("int32", None),
    _F.TYPE_SFIXED32: ("int32", None),
    _F.TYPE_UINT32: ("int64", 0),
    _F.TYPE_FIXED32: ("int64", 0),
    _F.TYPE_INT64: ("int64", None),
    _F.TYPE_SINT64: ("int64", None),
    _F.TYPE_SFIXED64: ("int64", None),
    _F.TYPE_UINT64: ("int64", 0),
    _F.TYPE_FIXED64: ("int64", 0),
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "any JSON value"},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "number", "description": "seconds"},
}

REQUEST_ID_PARAMETER = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": "External request id; generated when absent and always returned in the answer.",
    "schema": {"type": "string", "pattern": PATTERN.pattern},
    "example": "1536751345,8b8b5937-2e9c-4e8b-a7a7-5caf86621b5a",
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error_code", "desc", "detail", "link"],
    "properties": {
        "error_code": {"type": "integer", "enum": sorted(REGISTRY)},
        "desc": {"type": "string"},
        "detail": {"type": "string"},
        "link": {"type": "string", "description": "The error's page in the development manual."},
    },
    "additionalProperties": True,
}
# Routes the facade serves itself, not from an RPC.
FACADE_PATHS: dict[str, Any] = {
    "/docs/spec": {
        "get": {
            "tags": ["documents"],
            "summary": "get openapi documentation",
            "operationId": "GetOpenApiDocument",
            "parameters": [
                REQUEST_ID_PARAMETER,
                {
                    "name": "Accept",
                    "in": "header",
                    # A list of media ranges, negotiated as usual (q values, */*); without one
                    # the answer is YAML, and one matching neither type is error 12024.
                    "required": False,
                    "description": "application/x-yaml (the default) or text/html.",
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": {
                    "description": "The OpenAPI document",
                    # The YAML is this document: an object to a client that parses it.
                    "content": {"application/x-yaml": {"schema": {"type": "object"}}, "text/html": {}},
                },
                "default": {"$ref": "#/components/responses/Error"},
            },
        }
    },
    "/docs/dev": {
        "get": {
            "tags": ["documents"],
            "summary": "get development manual",
            "operationId": "GetDevelopmentManual",
            "parameters": [REQUEST_ID_PARAMETER],
            "responses": {
                "302": {"description": "Redirect to /docs/dev/index.html"},
                "default": {"$ref": "#/components/responses/Error"},
            },
        }
    },
}


class SchemaBuilder:
    """JSON schemas of messages, named by their full proto name in components.schemas."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, descriptor: Descriptor) -> dict[str, Any]:
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        if descriptor.full_name not in self.schemas:
            self.schemas[descriptor.full_name] = {}  # placeholder breaks recursion
            self.schemas[descriptor.full_name] = self._message(descriptor)
        return {"$ref": f"#/components/schemas/{descriptor.full_name}"}

    def _message(self, descriptor: Descriptor) -> dict[str, Any]:
        properties = {json_name(f): self.field(f) for f in descriptor.fields}
        return {"type": "object", "properties": properties, "additionalProperties": False}

    def scalar(self, field: FieldDescriptor) -> dict[str, Any]:
        kind = field.type
        if kind == _F.TYPE_ENUM:
            return {"type": "string", "enum": enum_choices(field.enum_type), "nullable": True}
        if kind in _INTEGER_FORMATS:
            fmt, minimum = _INTEGER_FORMATS[kind]
            schema: dict[str, Any] = {"type": "integer", "format": fmt}
            declared_min, declared_max = declared_bounds(field)
            if declared_min is not None:
                minimum = max(declared_min, minimum or declared_min)
            if minimum is not None:
                schema["minimum"] = minimum
            if declared_max is not None:
                schema["maximum"] = declared_max
            return schema
        if kind in (_F.TYPE_FLOAT, _F.TYPE_DOUBLE):
            return {"type": "number"}
        if kind == _F.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == _F.TYPE_BYTES:
            return {"type": "string", "format": "byte"}
        if kind == _F.TYPE_MESSAGE:
            return self.ref(field.message_type)
        return {"type": "string"}

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = self.scalar(field.message_type.fields_by_name["value"])
            return {"type": "object", "additionalProperties": value}
        if is_repeated(field):
            return {"type": "array", "items": self.scalar(field)}
        schema = self.scalar(field)
        if field.has_presence:
            return {"allOf": [schema], "nullable": True} if "$ref" in schema else {**schema, "nullable": True}
        return schema


def _operation(route: Route, schemas: SchemaBuilder) -> dict[str, Any]:
    method = route.method
    parameters: list[dict[str, Any]] = [REQUEST_ID_PARAMETER]
    fields = route.input_type.fields_by_name
    for name in route.path_fields:
        parameters.append(
            {"name": name, "in": "path", "required": True, "schema": schemas.scalar(fields[name])}
        )
    for field in route.query_fields():
        parameters.append(
            {
                "name": json_name(field),
                "in": "query",
                "required": is_required(field),
                "schema": schemas.field(field),
            }
        )
    operation: dict[str, Any] = {
        "operationId": method.name,
        "summary": route.extras.summary or method.name,
        "tags": [route.extras.tag or method.containing_service.name],
        "parameters": parameters,
        "x-grpc-method": route.grpc_path.lstrip("/"),
    }
    if route.body == "*":
        body_schema = schemas.ref(route.input_type)
    elif route.body:
        body_schema = schemas.field(fields[route.body])
    else:
        body_schema = None
    if body_schema is not None:
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": body_schema}},
        }
    headers = {HEADER: {"schema": {"type": "string"}, "description": "The request id."}}
    if route.http_body:
        # google.api.HttpBody: the answer is the body's bytes, of one of the declared types.
        binary = {"schema": {"type": "string", "format": "binary"}}
        operation["responses"] = {
            str(route.success_status): {
                "description": "Success: the body itself, of the media type it declares",
                "headers": headers,
                "content": {media: dict(binary) for media in route.produces},
            },
            "default": {"$ref": "#/components/responses/Error"},
        }
        return operation
    if route.response_body:
        response_schema = schemas.field(method.output_type.fields_by_name[route.response_body])
    else:
        response_schema = schemas.ref(method.output_type)
    if route.server_streaming:
        success = {
            "101": {
                "description": "WebSocket upgrade; each message is a JSON object of this schema.",
                "headers": headers,
                "content": {"application/json": {"schema": response_schema}},
            }
        }
    elif route.success_status == 204:
        success = {"204": {"description": "Done", "headers": headers}}
    else:
        content: dict[str, Any] = {"application/json": {"schema": response_schema}}
        for media in route.produces[1:]:
            content[media] = {"schema": {"type": "string"}}
        success = {
            str(route.success_status): {"description": "Success", "headers": headers, "content": content}
        }
    operation["responses"] = {**success, "default": {"$ref": "#/components/responses/Error"}}
    return operation


def build_openapi(routes: list[Route], title: str, version: str) -> dict[str, Any]:
    schemas = SchemaBuilder()
    paths: dict[str, Any] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.http_method.lower()] = _operation(route, schemas)
    paths.update(FACADE_PATHS)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": title,
            "version": version,
            "description": "Generated from the lva.v1 protos and their google.api.http annotations.",
        },
        "paths": dict(sorted(paths.items())),
        # Optional: the token is only asked for when facade.auth_token is set (docs/security.md).
        "security": [{}, {"bearerAuth": []}],
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "facade.auth_token, when set; not needed by /healthcheck, "
                    "/version, /metrics and /docs.",
                }
            },
            "schemas": {"LunaError": ERROR_SCHEMA, **dict(sorted(schemas.schemas.items()))},
            "responses": {
                "Error": {
                    "description": "LUNA error body",
                    "headers": {HEADER: {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/LunaError"}}},
                }
            },
        },
    }
