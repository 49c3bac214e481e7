"""Validate request bodies the bot sends against Discord's own OpenAPI description."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

SPEC = Path(__file__).with_name("openapi.json")


class OpenAPIValidator:
    def __init__(self, spec_path: Path = SPEC) -> None:
        self.spec = json.loads(spec_path.read_text())
        self.routes: list[tuple[re.Pattern[str], str, dict[str, Any]]] = []
        for template, operations in self.spec["paths"].items():
            parts = re.split(r"\{[^}]+\}", template)
            pattern = re.compile("^" + "[^/]+".join(re.escape(part) for part in parts) + "$")
            for method, operation in operations.items():
                self.routes.append((pattern, method.upper(), operation))

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        for pattern, route_method, operation in self.routes:
            if route_method == method and pattern.match(path):
                return operation
        return None

    def validate(self, method: str, path: str, body: Any, content_type: str) -> str | None:
        """None when the body is valid; else the best-matching branch's error, in words."""
        operation = self.operation(method, path)
        if operation is None:
            return f"{method} {path}: not a route the fake knows from the OpenAPI description"
        request_body = operation.get("requestBody")
        if request_body is None:
            return None if body in (None, b"", {}) else f"{method} {path}: takes no body"
        content = request_body["content"]
        schema = content.get(content_type) or content.get("application/json")
        if schema is None:
            return f"{method} {path}: content type {content_type} not accepted"
        document = {**schema["schema"], "components": self.spec["components"]}
        error = best_match(Draft202012Validator(document).iter_errors(body))
        if error is None:
            return None
        return f"{method} {path}: {error.message} (at {error.json_path})"
