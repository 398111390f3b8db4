"""Live events: the EventHub over Redis pub/sub (resume, epochs, fan-out) and the SSE views.
"""
