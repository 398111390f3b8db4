"""The request core: the middleware chain (correlation, errors, record, auth, limits, CORS),
problem codes, JSON in and out, the HTTP server, the OpenAPI spec view, and which peers'
forwarding headers are believed (``trusted``).

It may import settings, keys, db/ and auth/ stores; never a capability's views.
"""
