"""liveos-tui: a Textual view of every LiveOS stick's space, with safe actions.

The folder tui/ is installed as the package ``liveos_tools_tui``. It talks to the
library (liveos_tools) only through a Backend (backend.py), so tests run the app on
a FixtureBackend; the library never imports this package or textual.
"""

__all__: list[str] = []
