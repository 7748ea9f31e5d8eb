"""A self-contained HTML rendering of the OpenAPI document: no scripts, no CDN, no network."""

from __future__ import annotations

import json
from html import escape
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:1.2em 2em}header p{margin:.3em 0 0;color:#c9d1e0}
main{max-width:1100px;margin:0 auto;padding:1em 2em}h2{border-bottom:2px solid #d8dde6;padding-bottom:.2em}
.op{background:#fff;border:1px solid #d8dde6;border-radius:6px;margin:.8em 0;padding:.8em 1em}
.verb{display:inline-block;min-width:4.5em;text-align:center;font-weight:700;color:#fff;
border-radius:4px;padding:.15em .4em;margin-right:.6em}
.get{background:#2f7fd1}.post{background:#2b9a48}.patch{background:#c98a13}
.delete{background:#c2392b}.put{background:#7a4fc2}code,pre{font-family:ui-monospace,monospace}
.path{font-family:ui-monospace,monospace;font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0;width:100%}
td,th{border:1px solid #e3e7ee;padding:.3em .5em;text-align:left;vertical-align:top;font-size:.92em}
th{background:#f0f2f6}pre{background:#f0f2f6;padding:.6em;overflow:auto;font-size:.85em}
"""


def _schema_text(schema: Any) -> str:
    if not isinstance(schema, dict):
        return ""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'
    if "allOf" in schema:
        return " ".join(_schema_text(s) for s in schema["allOf"]) + (
            " | null" if schema.get("nullable") else ""
        )
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_schema_text(schema.get('items', {}))}"
    text = escape(str(kind))
    if "enum" in schema:
        text += " (" + ", ".join(escape(str(v)) for v in schema["enum"]) + ")"
    if "format" in schema:
        text += f" <small>{escape(schema['format'])}</small>"
    if schema.get("nullable"):
        text += " | null"
    return text


def _operation_html(path: str, verb: str, op: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
        f"<td>{'yes' if p.get('required') else 'no'}</td><td>{_schema_text(p.get('schema', {}))}</td></tr>"
        for p in op.get("parameters", [])
    )
    parts = [
        f'<div class="op" id="op-{escape(op.get("operationId", ""))}">',
        f'<span class="verb {verb}">{verb.upper()}</span><span class="path">{escape(path)}</span>',
        f"<p>{escape(op.get('summary', ''))}</p>",
    ]
    if rows:
        parts.append(
            f"<table><tr><th>parameter</th><th>in</th><th>required</th><th>schema</th></tr>{rows}</table>"
        )
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body:
        parts.append(f"<p>Request body (application/json): {_schema_text(body)}</p>")
    for status, response in op.get("responses", {}).items():
        if "$ref" in response:
            parts.append(
                f"<p>{escape(status)}: LUNA error body (<a href='#schema-LunaError'>LunaError</a>)</p>"
            )
            continue
        media = ", ".join(escape(m) for m in response.get("content", {}))
        first: dict[str, Any] = next(iter(response.get("content", {}).values()), {})
        schema = first.get("schema")
        described = f"{escape(response.get('description', ''))} {media} {_schema_text(schema)}".strip()
        parts.append(f"<p>{escape(status)}: {described}</p>")
    parts.append("</div>")
    return "".join(parts)


def render_html(spec: dict[str, Any], yaml_text: str) -> str:
    info = spec.get("info", {})
    by_tag: dict[str, list[str]] = {}
    for path, operations in spec.get("paths", {}).items():
        for verb, op in operations.items():
            tag = (op.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).append(_operation_html(path, verb, op))
    sections = "".join(f"<h2>{escape(tag)}</h2>{''.join(ops)}" for tag, ops in by_tag.items())
    schema_parts = []
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        props = "".join(
            f"<tr><td><code>{escape(prop)}</code></td><td>{_schema_text(sub)}</td></tr>"
            for prop, sub in schema.get("properties", {}).items()
        )
        extra = "" if props else f"<pre>{escape(json.dumps(schema, indent=1))}</pre>"
        schema_parts.append(
            f'<div class="op" id="schema-{escape(name)}"><b>{escape(name)}</b>'
            f"<table><tr><th>field</th><th>schema</th></tr>{props}</table>{extra}</div>"
        )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(info.get('title', 'API'))}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{escape(info.get('title', ''))} <small>{escape(info.get('version', ''))}</small></h1>"
        f"<p>{escape(info.get('description', ''))}</p></header><main>{sections}"
        f"<h2>schemas</h2>{''.join(schema_parts)}"
        f"<h2>OpenAPI document</h2><details><summary>YAML</summary><pre>{escape(yaml_text)}</pre></details>"
        "</main></body></html>"
    )
