"""Live events: the EventHub over Redis pub/sub (``hub``), what an event is (``envelope``), resume
and epochs (``history``), fan-out to the clients (``fanout``) and the SSE views.
"""
