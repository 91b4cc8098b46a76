"""Validate JSON against the schemas of Immich's OpenAPI 3.0 document with jsonschema.

OpenAPI 3.0 marks nullable values with `nullable: true`, which JSON Schema does not know; the
document is rewritten once so that such values also accept null.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema


def _convert(node: Any) -> Any:
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _convert(value) for key, value in node.items() if not key.startswith("x-")}
    if converted.pop("nullable", False):
        if "enum" in converted:
            converted["enum"] = [*converted["enum"], None]
        if "type" in converted and "$ref" not in converted:
            converted["type"] = [converted["type"], "null"]
        else:
            return {"anyOf": [converted, {"type": "null"}]}
    return converted


# Immich 3.2.0's document is not in ../shared. Its changes to the parts facesyncd uses, as third parties
# quote 3.2.0's spec (README "Immich versions"), applied to 3.1.0's: /search/metadata takes a `cursor`
# and a structured `filter`, and answers a required `nextCursor` beside the deprecated `nextPage`.
DERIVED = {"3.2.0": "3.1.0"}


EXCERPT_3_2 = "openapi-3.2.0-search-excerpt.json"


def _as_3_2(document: dict[str, Any], excerpt: dict[str, Any]) -> None:
    """3.1.0's document with 3.2's listing: the cursor, the filter tree (its leaf schemas were not
    transcribed: any object), and `orderBy` with its schemas as 3.2.0's published spec has them."""
    schemas = document["components"]["schemas"]
    search = schemas["MetadataSearchDto"]["properties"]
    search["cursor"] = {"type": "string", "description": "Cursor from a previous page's nextCursor"}
    search["filter"] = {"type": "object", "description": "Structured filter tree (SearchFilter)"}
    search["orderBy"] = {"$ref": "#/components/schemas/SearchOrder"}
    for name in ("SearchOrder", "SearchOrderField"):
        schemas[name] = excerpt["components"]["schemas"][name]
    answer = schemas["SearchAssetResponseDto"]
    answer["properties"]["nextCursor"] = {"type": "string", "nullable": True}
    answer["required"] = [*answer.get("required", []), "nextCursor"]


class Spec:
    def __init__(self, path: Path, version: str | None = None) -> None:
        document = json.loads(path.read_text(encoding="utf-8"))
        if version == "3.2.0":
            _as_3_2(document, json.loads((path.parent / EXCERPT_3_2).read_text(encoding="utf-8")))
        self.paths = document["paths"]
        self.components = _convert(document["components"])

    def _validator(self, schema: dict[str, Any]) -> jsonschema.protocols.Validator:
        root = {"components": self.components, **_convert(schema)}
        return jsonschema.Draft202012Validator(root)

    def response_schema(self, method: str, template: str, status: int) -> dict[str, Any] | None:
        operation = self.paths[template][method.lower()]
        response = operation["responses"].get(str(status))
        if response is None:
            return None
        content = response.get("content", {}).get("application/json")
        return None if content is None else content["schema"]

    def check_response(self, method: str, template: str, status: int, body: Any) -> None:
        schema = self.response_schema(method, template, status)
        if schema is None:
            if status >= 400:
                return  # error bodies are not in the spec; their flavour is tested separately
            raise AssertionError(f"{method} {template} has no documented {status} JSON answer")
        self._validator(schema).validate(body)

    def check_request(self, method: str, template: str, body: Any) -> None:
        operation = self.paths[template][method.lower()]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        validator = self._validator(schema)
        validator.validate(body)
        # Immich drops unknown fields silently: catch a misspelt field here instead.
        target = schema
        if "$ref" in target:
            target = self.components["schemas"][target["$ref"].rsplit("/", 1)[1]]
        unknown = set(body) - set(target.get("properties", {}))
        assert not unknown, f"{template}: fields unknown to the spec: {sorted(unknown)}"


@functools.lru_cache(maxsize=4)
def load_spec(path: Path, version: str | None = None) -> Spec:
    """The document at `path`; for a DERIVED version, that of its base with the version's changes."""
    return Spec(path, version)
