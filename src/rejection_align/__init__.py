"""rejection-align: safety alignment of multi-modal LLMs with benign rejection data, for LLaMA-Factory.

This module is imported by the start-up line in every Python process of the environment, so it defines
names only; the patching API is loaded on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "install", "uninstall", "is_installed", "status"]


def __getattr__(name: str):
    if name in ("install", "uninstall", "is_installed", "status"):
        from . import hook

        return getattr(hook, name)

    raise AttributeError(f"module 'rejection_align' has no attribute {name!r}")
