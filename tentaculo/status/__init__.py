"""What the gateway reports: services and their prober, feature flags, dependencies, request
metrics and their rollups, and the status, health, metrics, features and trace views.
"""
