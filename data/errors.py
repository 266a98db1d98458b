"""Errors a user can cause (a path, a config value, a checkpoint, an image).

Raise `UserError` with one sentence that names the thing and says what to do; entry points catch it
and print the sentence instead of a traceback.
"""


class UserError(Exception):
  """A problem with the user's input, explained in one sentence."""


def require(condition: bool, message: str) -> None:
  """Raises UserError(message) unless condition holds."""
  if not condition:
    raise UserError(message)
