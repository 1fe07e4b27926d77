"""The plugin contract of streamsnap: the ``hookimpl`` marker and the hook specifications.

Plugins import ``hookimpl`` (also re-exported as ``streamsnap.hookimpl``) and implement any of
the hooks in :mod:`streamsnap.hooks.specs`.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "streamsnap"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
_hookspec = pluggy.HookspecMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "hookimpl"]
