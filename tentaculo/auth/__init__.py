"""Who may call: hashed tokens, scopes and expiry, failed-authentication and per-token limits,
short-lived event tickets, and the token admin views.
"""
