"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class LabelgenError(Exception):
    """A user-facing error: bad input, missing file, refused checkpoint. Message is one line."""


class DataError(LabelgenError):
    """Bad or missing data on disk (image, mask, classes file, dataset folder)."""
