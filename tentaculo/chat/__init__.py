"""Operator chat: the provider registry and its breaker, the chat turn and its record (``turn``),
the chat action log, and both chat faces (the operator's and the OpenAI-compatible one) with their
one SSE relay (``streaming``).
"""
