"""Operator chat: the provider registry and its breaker, the chat action log, and both chat
faces (the operator's and the OpenAI-compatible one).
"""
