"""The LLaMA-Factory processor hook: parser and loader patches, processors, masking, settings.

Imported from the start-up path (``targets``), so it loads nothing until a name is asked for.
"""

__all__ = ["install", "uninstall", "is_installed", "status"]


def __getattr__(name: str):
    if name in ("install", "uninstall", "is_installed"):
        from . import patches

        return getattr(patches, name)

    if name == "status":
        from . import command

        return command.status

    raise AttributeError(f"module 'rejection_align.hook' has no attribute {name!r}")
