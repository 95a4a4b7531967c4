"""The one exception type the traces package raises for bad configs and bad trace files."""


class TraceError(ValueError):
    """A trace could not be loaded: bad config, missing file, or malformed data."""
