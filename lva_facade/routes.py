"""The route table, read from service descriptors and their ``google.api.http`` rules.

Nothing here knows a particular service: give it descriptors, get routes. The transcoder
(``transcoder.py``) serves them and ``openapi.py`` documents them, so both always agree.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor

from lva.v1 import options_pb2

# {stream_id} or {name=pattern}: the facade binds only whole path segments to fields.
_PATH_VARIABLE = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_.]*)(?:=[^}]*)?\}")
_HTTP_VERBS = ("get", "put", "post", "delete", "patch")
# A response of this type is the HTTP body itself (raw bytes and their content type), not JSON.
HTTP_BODY = "google.api.HttpBody"


def is_required(field: FieldDescriptor) -> bool:
    """Whether the proto marks ``field`` REQUIRED (``google.api.field_behavior``)."""
    behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return field_behavior_pb2.REQUIRED in behaviors


@dataclass(frozen=True)
class Route:
    """One REST binding of one RPC."""

    http_method: str
    path: str
    method: MethodDescriptor
    body: str
    response_body: str
    extras: options_pb2.HttpExtras
    path_fields: tuple[str, ...] = field(default=())

    @property
    def grpc_path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def input_type(self) -> Descriptor:
        descriptor: Descriptor = self.method.input_type
        return descriptor

    @property
    def success_status(self) -> int:
        return self.extras.success_status or 200

    @property
    def http_body(self) -> bool:
        """Whether the RPC answers with a ``google.api.HttpBody``: served as its bytes, with its
        ``content_type``, never rendered as JSON."""
        return bool(self.method.output_type.full_name == HTTP_BODY)

    @property
    def produces(self) -> tuple[str, ...]:
        if self.http_body:
            # The media types the body may have (http_extras.produces); any, when none are named.
            return tuple(self.extras.produces) or ("*/*",)
        return ("application/json", *self.extras.produces)

    def query_fields(self) -> list[FieldDescriptor]:
        """Request fields bound from the query string: those bound neither to the path nor to the body."""
        if self.body == "*":
            return []
        return [
            f
            for f in self.input_type.fields
            if f.name not in self.path_fields
            and f.name != self.body
            and f.type != FieldDescriptor.TYPE_MESSAGE
        ]


def _routes_for_rule(
    method: MethodDescriptor, rule: http_pb2.HttpRule, extras: options_pb2.HttpExtras
) -> list[Route]:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        return []
    if pattern == "custom":
        verb, path = rule.custom.kind.upper(), rule.custom.path
    elif pattern in _HTTP_VERBS:
        verb, path = pattern.upper(), getattr(rule, pattern)
    else:
        return []
    path_fields = tuple(_PATH_VARIABLE.findall(path))
    unknown = [name for name in path_fields if name not in method.input_type.fields_by_name]
    if unknown:
        raise ValueError(f"{method.full_name}: path {path} binds unknown fields {unknown}")
    routes = [
        Route(
            http_method=verb,
            path=_PATH_VARIABLE.sub(lambda m: "{" + m.group(1) + "}", path),
            method=method,
            body=rule.body,
            response_body=rule.response_body,
            extras=extras,
            path_fields=path_fields,
        )
    ]
    for extra_rule in rule.additional_bindings:
        routes.extend(_routes_for_rule(method, extra_rule, extras))
    return routes


def routes_for_service(service: ServiceDescriptor) -> list[Route]:
    routes: list[Route] = []
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        extras = options_pb2.HttpExtras()
        if options.HasExtension(options_pb2.http_extras):
            extras = options.Extensions[options_pb2.http_extras]
        routes.extend(_routes_for_rule(method, options.Extensions[annotations_pb2.http], extras))
    return routes


def discover_routes(services: Iterable[ServiceDescriptor]) -> list[Route]:
    """Every REST binding of every annotated RPC of ``services``, in declaration order."""
    routes = [route for service in services for route in routes_for_service(service)]
    seen: dict[tuple[str, str], str] = {}
    for route in routes:
        key = (route.http_method, route.path)
        if key in seen:
            raise ValueError(f"{route.method.full_name} and {seen[key]} both bind {key[0]} {key[1]}")
        seen[key] = route.method.full_name
    return routes


def lva_services() -> list[ServiceDescriptor]:
    """Every service of the generated lva.v1 package: a new proto file with a new service is
    picked up without a facade change."""
    import lva.v1

    services: list[ServiceDescriptor] = []
    for module_info in sorted(pkgutil.iter_modules(lva.v1.__path__), key=lambda m: m.name):
        if module_info.name.endswith("_pb2"):
            module = importlib.import_module(f"lva.v1.{module_info.name}")
            services.extend(module.DESCRIPTOR.services_by_name.values())
    return services
