"""Which paths of a layer the normalizer drops or empties, and how patterns match.

The build-varying files live here once: the normalizer drops them, the hygiene scan reports
any that reach a layer, and the templates' clean-up removes them (rendered from this list).
"""
from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

# Path patterns, relative to the layer root (no leading "/" or "./").  A pattern is matched per
# path component: "*", "?" and "[...]" never match "/", and a "**" component matches zero or more
# whole components.  A drop pattern that matches a directory drops everything below it too.
# A pattern starting with "!" is an exception: a path it matches *exactly* is kept even when a
# drop pattern matches it (it does not protect what lies below it).  Whiteouts (".wh.*") are
# never dropped: they only say what a lower layer had, and are kept as they are.
BUILD_VARYING: tuple[str, ...] = (
    "var/cache/apt/*.bin",
    "var/log/apt/*",
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
)
"""Files every apt or ldconfig run writes with the time in them: the normalizer drops them, the
hygiene scan reports any that ship, the templates' clean-up removes them."""

DEFAULT_DROP: tuple[str, ...] = (
    "var/lib/apt/lists/*",
    "!var/lib/apt/lists/partial",  # apt expects the dir; its content varies
    "!var/lib/apt/lists/lock",  # empty file
    *BUILD_VARYING,
    "root/.cache/pip",
    "tmp/*",
)
PYCACHE_DROP = "**/__pycache__"
"""What ``keep_pycache=False`` adds to the drop list.

``keep_pycache`` is ``"valid"`` (the default), False (drop every ``__pycache__``) or True (keep
them all).  ``"valid"`` keeps only bytecode that is a function of its source and stays valid
after clamping: hash-based pycs (PEP 552; what py_compile writes when SOURCE_DATE_EPOCH is set,
e.g. Debian's stdlib pycs) and timestamp pycs whose recorded source mtime is <= the epoch (the
clamp leaves that source's mtime alone).  It drops the rest: pycs of files written during the
build record wall-clock mtimes, and the clamp would make them stale anyway.  Dropping *all* of
them would cost every Python start in the image a recompile of the stdlib it imports, since a
non-root user cannot write the pycs back.
"""
PycacheMode = bool | Literal["valid"]

DEFAULT_EMPTY: tuple[str, ...] = ("etc/machine-id", "var/lib/dbus/machine-id")
"""Regular files kept but truncated to size 0 (an empty machine-id means "not yet set")."""


def _component_regex(part: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = part.find("]", i + 2 if part[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = part[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("(?!/)[" + body.replace("\\", "\\\\") + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _glob_regex(pattern: str) -> str:
    parts = [p for p in pattern.strip("/").split("/") if p not in ("", ".")]
    if not parts or parts[-1] == "**":
        raise ValueError(f"bad path pattern {pattern!r}: empty, or ends in '**'")
    out: list[str] = []
    for i, part in enumerate(parts):
        if part == "**":
            out.append("(?:[^/]+/)*")
            continue
        out.append(_component_regex(part))
        if i < len(parts) - 1:
            out.append("/")
    return "".join(out)


IN_PYCACHE = re.compile(r"(?:.*/)?__pycache__/.*", re.S)


@dataclass(frozen=True)
class Rules:
    drop: re.Pattern[str] | None
    keep: re.Pattern[str] | None
    empty: re.Pattern[str] | None
    check_pyc: bool = False  # keep_pycache="valid": decide __pycache__ files by their header

    def dropped(self, rel: str) -> bool:
        if self.drop is None or posixpath.basename(rel).startswith(".wh."):
            return False
        if self.drop.fullmatch(rel) is None:
            return False
        return self.keep is None or self.keep.fullmatch(rel) is None

    def emptied(self, rel: str) -> bool:
        return self.empty is not None and self.empty.fullmatch(rel) is not None


def rules(drop: Iterable[str], empty: Iterable[str], keep_pycache: PycacheMode) -> Rules:
    """The compiled rules every public entry point shares (and validates the same way)."""
    return compile_rules(tuple(drop), tuple(empty), keep_pycache)


def compile_rules(
    drop: Iterable[str], empty: Iterable[str], keep_pycache: PycacheMode
) -> Rules:
    if keep_pycache not in (False, True, "valid"):
        raise ValueError(f"keep_pycache must be False, True or 'valid', not {keep_pycache!r}")
    drops = [p for p in drop if not p.startswith("!")]
    keeps = [p[1:] for p in drop if p.startswith("!")]
    if keep_pycache != "valid" and not keep_pycache and PYCACHE_DROP not in drops:
        drops.append(PYCACHE_DROP)

    def alt(patterns: list[str], suffix: str) -> re.Pattern[str] | None:
        if not patterns:
            return None
        body = "|".join(_glob_regex(p) for p in patterns)
        return re.compile(f"(?:{body}){suffix}", re.S)

    return Rules(
        alt(drops, "(?:/.*)?"), alt(keeps, ""), alt(list(empty), ""), keep_pycache == "valid"
    )


def relative(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")

