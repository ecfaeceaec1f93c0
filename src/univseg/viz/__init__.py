"""Colourised label maps and overlays."""
from .overlay import colorize, overlay

__all__ = ["colorize", "overlay"]
