"""Moved one level up (:mod:`rejection_align.json_problems`: data/, eval/ and hook/ all word JSON problems with it)."""

from ..json_problems import *  # noqa: F403
