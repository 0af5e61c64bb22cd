"""Comparing a password someone gave with the one set, for both front ends.

Only the comparison: who may guess how often is :mod:`.guesses`' business.
"""

from __future__ import annotations

import hashlib
import hmac


def passwords_match(given: bytes, expected: str) -> bool:
    """Constant-time comparison: digests first, so lengths do not show either."""
    a = hashlib.sha256(given).digest()
    b = hashlib.sha256(expected.encode()).digest()
    return hmac.compare_digest(a, b)
