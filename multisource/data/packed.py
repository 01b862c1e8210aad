"""Optional packed cache per bin and split (pre-resized uint8 arrays); see issue on the fast data path.

``open_packed`` returns ``None`` when no valid cache exists, so loaders fall back to the image folders.
"""

from __future__ import annotations

from typing import Any


def open_packed(handle: Any, bin_name: str, split: str, transform: Any) -> Any:
    return None
