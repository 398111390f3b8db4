"""The operator console: a browser app served by the gateway at ``/operator/``.

This package owns the console's routes (the page for every view address, the versioned static
assets) and the security headers of every console answer. The page itself holds no data: the
browser signs in with a token and calls ``/operator/api/...`` like any other client.
"""

from tentaculo.console.views import setup

__all__ = ["setup"]
