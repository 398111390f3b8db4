"""Operator chat: the provider contract and base class (plugin.py) and their options (options.py),
the registry with its breaker and answer stream, the chat action log, and both chat faces (the
operator's and the OpenAI-compatible one).
"""
