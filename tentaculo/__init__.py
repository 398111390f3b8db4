"""tentaculo: the single-entrypoint gateway of the VX11 operator system."""

__version__ = "0.1.0"
