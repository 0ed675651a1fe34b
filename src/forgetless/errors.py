"""The one exception type for mistakes a user can fix (bad config, bad data, missing model).

The CLI prints these as one line and exits 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input: the message says what, where, and what to do."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


class OutOfMemory(UserError):
    """A step ran out of GPU memory with nothing left to step down; api.run_recipe adds the planner's
    advice for the config (the planner sits above the recipes, so they do not ask it themselves)."""
