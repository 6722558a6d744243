"""The one base class of the errors a user can fix: bad configuration, input or data.

Commands report these in one line and exit 2 (`facemask.cli`), never with a traceback; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FacemaskError(Exception):
    """Bad configuration, input or data, or an unavailable resource; the message says which and why."""
