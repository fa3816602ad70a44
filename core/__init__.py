"""Retrieval Lab: image retrieval with distractors — plain-Python pipeline stages, no UI imports."""

__version__ = "0.1.0"
