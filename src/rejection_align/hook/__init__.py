"""The LLaMA-Factory processor hook: parser and loader patches, processors, masking, settings.

Imported from the start-up path (``targets``), so it loads nothing until a name is asked for.
"""

__all__ = ["install", "uninstall", "is_installed", "status"]

# public name -> the module that holds it
_HOMES = {"install": "patches", "uninstall": "patches", "is_installed": "patches", "status": "command"}


def __getattr__(name: str):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)

    raise AttributeError(f"module 'rejection_align.hook' has no attribute {name!r}")
