"""The one exception the daemon and CLI turn into a one-line message and exit code."""


class VxlandError(Exception):
    """A clear, single-line reason why vxland cannot do what it was asked."""
