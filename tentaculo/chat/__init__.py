"""Operator chat: the provider contract and base class (``plugin``) and their options (``options``),
the registry with its breaker and answer stream, the chat turn and its record (``turn``), the chat
action log, and both chat faces (the operator's and the OpenAI-compatible one) with their one SSE
relay (``relay``).
"""
