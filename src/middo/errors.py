"""The root of every error that is the user's to fix (bad config, bad data, missing model or package).

The CLI prints these as one clear message instead of a traceback; anything else is a bug and keeps its traceback.
"""


class MiddoError(Exception):
    """An error whose message tells the user what to change."""
