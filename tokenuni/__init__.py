"""tokenuni: measure and repair the geometry of transformer representations, layer by layer."""

__version__ = "0.1.0"
