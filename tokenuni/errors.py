"""The project's own errors: one base class for every mistake a user can make and fix.

A :class:`TokenuniError` is a user error (a config key, a file, a model or a corpus that cannot mean
what was asked): the command line prints its message and exits 1, without a traceback. Anything else
(a ``KeyError`` or ``ValueError`` from inside the library) is a bug and surfaces as one, with its
traceback. Each module's error class derives from this one (and keeps the builtin it always was, so
``except ValueError`` in older callers still works).
"""
from __future__ import annotations


class TokenuniError(Exception):
    """A user error: the message names the key, file, model or layer, and the fix."""
