"""Strings that came over the network (AE titles, UIDs, addresses), made safe to log.

Below every role: the SCP, the judge worker and the forward worker all log
identifiers a peer chose, and none may let a peer forge a log line.
"""


def printable(value, limit: int = 64) -> str:
    """An untrusted string made safe for one log line (no control characters)."""
    text = str(value)[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)
