"""lmms-eval model ``llamafactory``: any LLaMA-Factory-trained model scored on lmms-eval's utility tasks.

lmms-eval (``pip install 'rejection-align[lmms]'``) finds models through the entry-point group ``lmms_eval.models``;
ours points at ``manifest`` below, which names the class in ``eval/lmms/model.py`` without importing it, so listing
lmms-eval's models stays cheap. See docs/evaluation.md, "Utility".
"""

from __future__ import annotations

from typing import Any


MODEL_ID = "llamafactory"
CLASS_PATH = "rejection_align.eval.lmms.model.LlamaFactoryLMM"

__all__ = ["CLASS_PATH", "MODEL_ID", "manifest"]


def manifest() -> Any:
    """The ``lmms_eval.models`` entry point: lmms-eval calls it and registers the returned ``ModelManifest``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
