"""Compares the Python environment it runs in with the pinned versions of `constraints.txt`.

    python scripts/check_constraints.py            # exit 1 and one line per difference when they differ (CI)
    python scripts/check_constraints.py --report   # the differences as a table, exit 0 (scripts/check_latest.sh)
    python scripts/check_constraints.py --write    # rewrite constraints.txt from this environment (after a new
                                                   # tested set passed the whole suite)

A difference is a distribution installed at another version than its pin, one installed without a pin, or a pin
whose distribution is not installed. mmavsr itself is not pinned.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path


CONSTRAINTS = Path(__file__).resolve().parent.parent / "constraints.txt"
# the project itself (installed editable from the checkout)
NOT_PINNED = {"mmavsr"}
HEADER = """\
# The exact versions of the environment the tests passed in (Python 3.11, Linux x86-64): every package that
# scripts/install.sh installs into .venv, torch and av included. install.sh and the README's manual install use it
# (pip install -c constraints.txt ...); setup.cfg keeps ranges for installing mmavsr into an environment of your own.
# .ci/run fails when the installed environment differs (scripts/check_constraints.py); scripts/check_latest.sh
# installs the newest versions setup.cfg allows and prints which differ from these.
# To move to a new tested set: install it, pass the whole suite, then `python scripts/check_constraints.py --write`.
"""


def normalize(name: str) -> str:
    """A distribution's name as pip compares it (PEP 503): lower case, runs of `-_.` as one `-`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    """`{name: version}` of a constraints file's `name==version` lines (comments and blank lines skipped)."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            raise SystemExit(f"{path}:{number}: {line!r} is not an exact pin (name==version)")
        pins[normalize(name.strip())] = version.strip()
    return pins


def installed() -> dict[str, str]:
    """`{name: version}` of every distribution in this environment except the project itself."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and normalize(name) not in NOT_PINNED:
            found[normalize(name)] = dist.version
    return found


def differences(pins: dict[str, str], have: dict[str, str]) -> list[tuple[str, str, str]]:
    """`(name, pinned, installed)` for each package whose versions differ; `-` where one side has none."""
    rows = []
    for name in sorted(set(pins) | set(have)):
        pinned, version = pins.get(name, "-"), have.get(name, "-")
        if pinned != version:
            rows.append((name, pinned, version))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--report", action="store_true", help="print the differences as a table and exit 0")
    mode.add_argument("--write", action="store_true", help="rewrite constraints.txt from this environment")
    parser.add_argument("--constraints", type=Path, default=CONSTRAINTS, help="the constraints file (%(default)s)")
    args = parser.parse_args(argv)

    have = installed()
    if args.write:
        lines = [f"{name}=={version}" for name, version in sorted(have.items())]
        args.constraints.write_text(HEADER + "\n".join(lines) + "\n")
        print(f"wrote {len(lines)} pins to {args.constraints}")
        return 0
    rows = differences(read_pins(args.constraints), have)
    if args.report:
        if not rows:
            print(f"every installed version equals its pin in {args.constraints.name}")
            return 0
        width = max(len(name) for name, _, _ in rows)
        print(f"{'package':<{width}}  {'pinned':<14}  installed")
        for name, pinned, version in rows:
            print(f"{name:<{width}}  {pinned:<14}  {version}")
        return 0
    for name, pinned, version in rows:
        print(f"{name}: pinned {pinned}, installed {version}", file=sys.stderr)
    if rows:
        print(
            f"check_constraints: this environment differs from {args.constraints} in {len(rows)} packages "
            "(install with scripts/install.sh, or pass the suite and run --write to move the pins)",
            file=sys.stderr,
        )
        return 1
    print(f"check_constraints: {len(have)} packages, each at its pinned version")
    return 0


if __name__ == "__main__":
    sys.exit(main())
