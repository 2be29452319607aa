"""Model loading, at its documented path: a re-export of
:mod:`chatstream.adapters.model.loading`.

    from chatstream.adapters.loading import load_model

    model, tokenizer = load_model("path/to/model", device="cpu")
"""

from __future__ import annotations

from .model.loading import load_model, placement

__all__ = ["load_model", "placement"]
