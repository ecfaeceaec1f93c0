"""univseg: one semantic-segmentation model for many domains with different label sets."""
__version__ = "0.1.0"
