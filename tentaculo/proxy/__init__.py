"""The reverse proxy to the modules behind the gateway: ``* /operator/api/proxy/<module>/<path>``.

A call is forwarded to ``<module base address>/<path>?<query>``. The view decides whether it may
go and builds a :class:`~tentaculo.proxy.call.ProxyCall`; a transport carries it.

* ``views.py``: the route handler ``proxy`` (scopes, module, allow-list, circuit breaker) and the
  relay of the answer to the client;
* ``paths.py``: which module paths may be reached, which query parameters go along;
* ``headers.py``: hop-by-hop, credential and forwarding rules both ways, ``Location``
  rewriting;
* ``call.py``: ``ProxyCall``, the streamed request body, and the errors transports raise;
* ``transport.py``: the transport interface (one method, ``send(call)``, and its response), its
  contract in full, and ``ModuleProxy``, which picks a transport per call and retries;
* ``aiohttp_transport.py`` and ``lean_transport.py``: the two transports, each mapping its own
  library's or socket's errors to the proxy's at its boundary;
* ``websocket.py``: the upgrade's frame relay.

Imports: ``tentaculo.http``, ``tentaculo.keys``, ``tentaculo.settings``, ``tentaculo.auth.tokens``
(scopes and the query credential names), ``tentaculo.status`` (the module registry and its
circuits), ``tentaculo.files.sandbox`` (its decoding depth)., and
``tentaculo.http.trusted`` (whose forwarding headers are believed).
"""
