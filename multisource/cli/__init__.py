"""Argument parsing shared by the thin entry scripts (scripts parse, the library does the work)."""
