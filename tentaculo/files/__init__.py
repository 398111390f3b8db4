"""The sandboxed file explorer: path resolution under the configured roots, and its view.
"""
