"""Start-up hook, run in every interpreter of the environment by ``rejection_align.pth`` (``import`` line) or, on
Python 3.15+ (PEP 829), by ``rejection_align.start`` (entry point ``rejection_align._startup:activate``).

Where both are honoured, importing this module and calling :func:`activate` both end in one finder: ``activate``
is idempotent, and a ``.start`` file beside the ``.pth`` turns the ``.pth``'s import line off anyway.

It only puts a finder on ``sys.meta_path`` that waits for LLaMA-Factory's loader and argument parser to be
imported; the real work (``rejection_align.hook.patches``) runs then and only then. It imports one module of names
(``hook/targets.py``, which imports nothing), returns at once when ``REJECTION_ALIGN_DISABLE`` is set, and never
raises: a failing start-up hook would break every program. See docs/architecture.md, "The start-up hook".
"""

import os
import sys


try:
    from rejection_align.hook.targets import DISABLE_ENV, PATCHED_ON_IMPORT
except Exception:  # a broken installation must not break every program: the finder then never goes in
    DISABLE_ENV, PATCHED_ON_IMPORT = None, frozenset()


class _PatchOnImport:
    """Meta-path finder: lets the normal finders locate a target module, then patches it once it has run."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in PATCHED_ON_IMPORT:
            return None

        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue

            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None

        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_and_patch(module):
            exec_module(module)
            try:  # patch_module records its own failures; this guards the import of the hook itself
                from rejection_align.hook import patches

                patches.patch_module(module)
            except Exception:  # never break an import of LLaMA-Factory
                pass

        try:
            loader.exec_module = exec_and_patch  # per-spec loader object made by the path finder
        except Exception:
            return spec

        return spec


def is_disabled() -> bool:
    if DISABLE_ENV is None:  # hook/targets.py could not be imported
        return True

    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def is_active() -> bool:
    """Whether the finder is on ``sys.meta_path`` (compared by name: a reloaded module makes a new class)."""
    return any(type(finder).__name__ == _PatchOnImport.__name__ for finder in sys.meta_path)


def activate() -> None:
    """Put the finder on ``sys.meta_path`` once; a no-op when disabled or already active. Never raises."""
    try:
        if is_disabled() or is_active():
            return

        sys.meta_path.insert(0, _PatchOnImport())
    except Exception:
        pass


activate()
