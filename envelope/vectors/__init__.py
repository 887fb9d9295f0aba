"""Published known-answer test vectors for envelope v1 (``v1.json``, format in README.md).

Any other implementation (a browser widget, an agent console) must reproduce every
valid case byte for byte and fail every invalid case with the error code given.
``generate.py`` beside this file made ``v1.json``; rerunning it reproduces the file.

>>> vectors = load_vectors()
>>> vectors["format"], len(vectors["valid"]) >= 10, len(vectors["invalid"]) >= 25
(1, True, True)
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

__all__ = ["VECTORS_PATH", "load_vectors"]

#: Where the v1 vectors ship inside the installed package.
VECTORS_PATH = pathlib.Path(__file__).resolve().parent / "v1.json"


def load_vectors() -> dict[str, Any]:
    """The parsed v1 vector file."""
    data: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return data
