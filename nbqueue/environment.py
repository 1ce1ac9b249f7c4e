"""The environment check: the distributions a pickled job imports, compared with the worker's versions.

The client scans the pickle of a job for the modules it references (the module names of its GLOBAL and
STACK_GLOBAL opcodes), maps each top-level module to the distribution that installs it, and records
``{module: {"distribution": name, "version": version}}`` in the payload header. A module that no
installed distribution provides (one on ``PYTHONPATH``, say) is recorded with an empty entry, so that a
worker that lacks it can still name it. The worker compares that record with its own environment.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import pickletools
import re
import sys
from dataclasses import dataclass

from nbqueue.errors import NbqueueError

#: Pickles up to this size are scanned opcode by opcode with pickletools. Larger ones are searched for
#: short strings that name imported modules, which is faster but may also count a string argument that
#: happens to equal an imported module's name.
OPCODE_SCAN_LIMIT_BYTES = 1024 * 1024

# Modules whose versions are never compared: the interpreter's own.
_IGNORED_MODULES = frozenset({"__main__", "__builtin__", "builtins", "copy_reg", "copyreg", "_codecs"})

# In protocol 4 and later, STACK_GLOBAL takes its module name from a SHORT_BINUNICODE string (opcode
# 0x8c, a one-byte length, UTF-8 text), which is what the fast search looks for.
_SHORT_STRING = re.compile(rb"\x8c([\x01-\xff])([A-Za-z_][A-Za-z0-9_.]*)")

_distributions_by_module: dict[str, list[str]] = {}
_versions: dict[str, str | None] = {}
_cached_for_path: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Difference:
    """One row of the environment table: a module whose distribution differs on the worker."""

    module: str
    distribution: str
    submitted_version: str
    worker_version: str
    #: True when the worker cannot import the module at all.
    missing: bool


def distributions_by_module() -> dict[str, list[str]]:
    """Return :func:`importlib.metadata.packages_distributions`, computed again only when ``sys.path`` changes.

    NOTE: a distribution installed or upgraded while ``sys.path`` stays the same (``pip install`` in a
    running kernel) is not seen until the process restarts.
    """
    global _cached_for_path
    path = tuple(sys.path)
    if _cached_for_path != path:
        _distributions_by_module.clear()
        _distributions_by_module.update(importlib.metadata.packages_distributions())
        _versions.clear()
        _cached_for_path = path
    return _distributions_by_module


def distribution_version(name: str) -> str | None:
    """Return the installed version of distribution ``name``, or None if it is not installed."""
    distributions_by_module()
    if name not in _versions:
        try:
            _versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            _versions[name] = None
    return _versions[name]


def referenced_modules(*pickles: bytes | memoryview) -> set[str]:
    """Return the top-level names of the modules that pickles import, without the standard library."""
    names: set[str] = set()
    for body in pickles:
        # Payloads are pickled with protocol 5, which imports only through STACK_GLOBAL: without its byte
        # (0x93), a pickle imports nothing, and most argument pickles skip the slow scan.
        if b"\x93" in body:
            names |= _module_names(bytes(body))
    tops = {name.partition(".")[0] for name in names}
    return {top for top in tops if top not in _IGNORED_MODULES and top not in sys.stdlib_module_names}


def describe_imports(*pickles: bytes | memoryview) -> dict[str, dict[str, str]]:
    """Return the header record of the distributions and versions that pickles import."""
    mapping = distributions_by_module()
    record: dict[str, dict[str, str]] = {}
    for module in sorted(referenced_modules(*pickles)):
        entry: dict[str, str] = {}
        for distribution in mapping.get(module, ()):
            version = distribution_version(distribution)
            if version is not None:
                entry = {"distribution": distribution, "version": version}
                break
        record[module] = entry
    return record


def compare_imports(record: object) -> list[Difference]:
    """Compare a header record with this process's environment.

    A row is returned for each module that this process cannot import, and for each distribution whose
    major or minor version differs. Versions that differ only in later parts are not listed.
    """
    if not isinstance(record, dict):
        return []
    mapping = distributions_by_module()
    differences = []
    for module, entry in sorted(record.items()):
        entry = entry if isinstance(entry, dict) else {}
        submitted_distribution = str(entry.get("distribution", ""))
        submitted_version = str(entry.get("version", ""))
        if importlib.util.find_spec(module) is None:
            differences.append(
                Difference(module, submitted_distribution, submitted_version or "-", "not installed", True)
            )
            continue
        if not submitted_version:
            continue
        candidates = [submitted_distribution, *mapping.get(module, ())]
        worker_version = next((v for v in map(distribution_version, candidates) if v is not None), None)
        if worker_version is not None and _major_minor(worker_version) != _major_minor(submitted_version):
            differences.append(Difference(module, submitted_distribution, submitted_version, worker_version, False))
    return differences


def format_table(differences: list[Difference], job_id: str) -> str:
    """Format the rows as a plain-text table, headed by a line that names the job."""
    rows = [("module", "distribution", "submitted", "worker")]
    rows += [(d.module, d.distribution or "-", d.submitted_version, d.worker_version) for d in differences]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = [f"The worker's environment differs from the one that submitted job {job_id}:"]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(lines) + "\n"


def _major_minor(version: str) -> tuple[str, str]:
    parts = (version.split(".") + ["0"])[:2]
    return tuple(re.match(r"\d*", part).group() or part for part in parts)  # type: ignore[return-value]


# Cached because enqueue_many pickles the function once and scans its pickle again for every call.
@functools.lru_cache(maxsize=64)
def _module_names(body: bytes) -> frozenset[str]:
    if len(body) <= OPCODE_SCAN_LIMIT_BYTES:
        return frozenset(_scan_opcodes(body))
    # NOTE: a large pickle is searched only in its first and last OPCODE_SCAN_LIMIT_BYTES, where the
    # imports of its objects usually are (a large array or bytes value contains no imports); a module
    # imported only in the middle of a large pickle is not recorded.
    view = memoryview(body)
    return frozenset(
        _search_short_strings(view[:OPCODE_SCAN_LIMIT_BYTES]) | _search_short_strings(view[-OPCODE_SCAN_LIMIT_BYTES:])
    )


def _scan_opcodes(body: bytes | memoryview) -> set[str]:
    """Follow the string pushes and memo of a pickle far enough to read each STACK_GLOBAL's module name."""
    names: set[str] = set()
    memo: dict[int, object] = {}
    # The values of the last two pushes; STACK_GLOBAL pops the module name and the qualified name.
    recent: list[object] = [None, None]
    for opcode, argument, _ in pickletools.genops(bytes(body)):
        name = opcode.name
        if name == "GLOBAL" or name == "INST":
            names.add(str(argument).partition(" ")[0])
            recent.append(None)
        elif name == "STACK_GLOBAL":
            if isinstance(recent[-2], str):
                names.add(recent[-2])
            recent.append(None)
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            recent.append(argument)
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(argument)] = recent[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(int(argument)))
        elif name not in ("FRAME", "PROTO", "STOP"):
            recent.append(None)
        del recent[:-2]
    return names


def _search_short_strings(body: bytes | memoryview) -> set[str]:
    """Return the short strings in a pickle that name modules this process has imported."""
    names = set()
    for match in _SHORT_STRING.finditer(bytes(body)):
        length, text = match.group(1)[0], match.group(2)
        if len(text) >= length:
            candidate = text[:length].decode("ascii")
            if candidate in sys.modules:
                names.add(candidate)
    return names


class EnvironmentMismatchError(NbqueueError):
    """The exception recorded in a job's FAILED result when the worker lacks modules the job imports, or
    when a worker started with ``--strict-env`` rejects a job whose distributions differ from its own."""
