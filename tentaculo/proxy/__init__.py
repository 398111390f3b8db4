"""The reverse proxy to the modules behind the gateway: its transports and its view.
"""
