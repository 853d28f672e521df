"""mschedule's agent: the daemon on every target machine, and the wire contract."""

__version__ = "0.1.0"
