"""liveos-tools: status, repair and maintenance of LiveOS sticks with persistent overlays."""

__version__ = "0.1.0"
