"""TEMPORARY(#10): the old home of utcnow, for the modules being rewritten; wecomd.store.times is its home."""
from __future__ import annotations

import functools

from .times import utcnow as _utcnow

# TEMPORARY(#10): used by wecomd/services.py and wecomd/automation/takeover.py (whole seconds, as before).
utcnow = functools.partial(_utcnow, whole_seconds=True)
