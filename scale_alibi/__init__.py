"""scale-alibi: aligned S1 / S2 / NAIP tile releases, a tile server, and Scale-ALiBi models."""

__version__ = "0.1.0"
