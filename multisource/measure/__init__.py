"""Measurement shared by every method: metrics, FLOPs, memory and time (dicts with units in key names)."""
