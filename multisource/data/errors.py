"""The error of unusable data on disk, in a module of its own so the builders can raise it without importing
torch (data/folder.py, which reads the images for training, re-exports it)."""


class DataError(RuntimeError):
    """The data on disk is missing or unusable; the message names the path and the fix."""
