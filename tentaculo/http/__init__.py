"""The request core: the middleware chain (correlation, errors, record, auth, limits, CORS),
problem codes, JSON in and out, the HTTP server and the OpenAPI spec view.

It may import settings, keys, db/ and auth/ stores; never a capability's views.
"""
