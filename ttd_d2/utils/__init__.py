"""Utilities outside the model: FLOP analysis."""
