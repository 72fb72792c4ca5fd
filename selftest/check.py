"""One result of the probe: what was checked, how it went, what to do about it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Optional

PASS = "pass"
WARN = "warn"
FAIL = "fail"
SKIP = "skip"

STATUSES = (PASS, WARN, FAIL, SKIP)


@dataclass
class Check:
    """A single check; ``remedy`` says what a user can do when it is not a pass."""

    id: str
    status: str
    message: str
    remedy: Optional[str] = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown check status {self.status!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def overall_status(checks: Iterable[Check]) -> str:
    """fail if any check failed, else warn if any warned, else pass."""
    statuses = {c.status for c in checks}
    if FAIL in statuses:
        return FAIL
    if WARN in statuses:
        return WARN
    return PASS
