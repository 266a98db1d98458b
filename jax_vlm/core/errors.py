"""Errors a user can cause; defined in data/errors.py (the lowest layer) so data/ raises the same
`UserError` that the entry points catch."""

from data.errors import UserError, require

__all__ = ['StageInterrupted', 'UserError', 'require']


class StageInterrupted(Exception):
  """A stage stopped before finishing on purpose (e.g. preemption); rerun to continue it."""
