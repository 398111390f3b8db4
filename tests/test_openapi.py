"""The OpenAPI document describes exactly the routes the gateway serves."""

from __future__ import annotations

import re

from tentaculo.app import create_app
from tentaculo.http.spec import openapi_document

METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


def _served(settings) -> set[tuple[str, str]]:
    app = create_app(settings)
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method == "HEAD":
            continue
        path = re.sub(r"\{([^}:]+):[^}]+\}", r"{\1}", path)  # drop regex parts of variables
        methods = METHODS - {"head"} if route.method == "*" else {route.method.lower()}
        routes |= {(m, path) for m in methods}
    return routes


def _documented() -> set[tuple[str, str]]:
    paths = openapi_document()["paths"]
    return {(m, p) for p, item in paths.items() for m in item if m in METHODS}


def test_every_route_is_documented_and_every_documented_route_exists(settings) -> None:
    served, documented = _served(settings), _documented()
    assert served - documented == set(), "routes missing from the spec"
    assert documented - served == set(), "spec paths the gateway does not serve"


async def test_spec_is_served_as_json(gateway) -> None:
    resp = await gateway.get("/operator/api/openapi.json")
    assert resp.status == 200
    body = await resp.json()
    assert body["openapi"].startswith("3.1")
    assert "/operator/api/whoami" in body["paths"]


def test_the_spec_lists_every_problem_code_the_gateway_sends() -> None:
    from tentaculo.http.errors import PROBLEMS

    documented = openapi_document()["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
    assert sorted(documented) == sorted(PROBLEMS)
