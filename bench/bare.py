"""The baseline: a bare aiohttp app on the same loop and server settings, with no middleware.

    python -m bench.bare PORT
"""

from __future__ import annotations

import sys

from aiohttp import web

from tentaculo.cli import _new_loop


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"name": "admin", "scopes": ["admin", "chat", "operate", "read"]})


def main() -> None:
    app = web.Application()
    app.router.add_get("/operator/api/whoami", whoami)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=_new_loop())


if __name__ == "__main__":
    main()
