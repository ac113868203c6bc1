"""liveos-tools: status, repair and maintenance of LiveOS sticks with persistent overlays."""

__version__ = "0.2.0"
