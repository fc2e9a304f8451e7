"""ssl_zoo: SimCLR, BYOL and CLIP trained, evaluated and compared side by side."""

__version__ = "0.1.0"
