"""Small helpers shared by the Python contract suites (tests/contract/*_contract.py).

A suite makes a `Checks`, runs each check with `checks.run(name, fn)` (fn raises AssertionError,
or any exception, to fail; raises `Skip` when the check cannot apply; may return a detail
string) and ends with `sys.exit(checks.finish())`: one PASS/FAIL/SKIP line per check, then the
closing line `N passed, N failed, N skipped`, and exit status 1 when any check failed.
"""

import json
import os
import sys


class Skip(Exception):
    """Raised by a check that cannot apply here (e.g. it needs a sandbox's control API)."""


def env(name, default=None):
    """An environment variable; exits with status 2 when it is required and missing."""
    value = os.environ.get(name, default)
    if value is None or value == "":
        print(f"missing environment variable {name}", file=sys.stderr)
        sys.exit(2)
    return value


def short(value, limit=700):
    """Compact text of a value (JSON where it can be), cut to `limit` characters."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        try:
            value = json.dumps(value, separators=(",", ":"), default=str, sort_keys=True)
        except (TypeError, ValueError):
            value = repr(value)
    value = " ".join(value.split())
    return value if len(value) <= limit else value[:limit] + "…"


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def run(self, name, fn):
        try:
            detail = fn()
        except Skip as skip:
            self.skipped += 1
            print(f"SKIP {name}: {skip}", flush=True)
        except AssertionError as error:
            self.failed += 1
            print(f"FAIL {name}: {error}", flush=True)
        except Exception as error:  # noqa: BLE001 - any error fails the check, with its type
            self.failed += 1
            print(f"FAIL {name}: {type(error).__name__}: {short(str(error))}", flush=True)
        else:
            self.passed += 1
            print(f"PASS {name}" + (f": {detail}" if detail else ""), flush=True)

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped", flush=True)
        return 1 if self.failed else 0
