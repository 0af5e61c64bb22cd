"""The QEMUs the tests and benchmarks run: the system's (Debian 12's 7.2) and 10.0.

QEMU 10.0 comes from Debian's bookworm-backports, unpacked by scripts/setup-qemu10.sh
(run by ``make setup``) into ``.cache/qemu10`` of a source checkout (or
``$SAFFRON_QEMU10_PREFIX``), never installed over the system's QEMU. It runs from
there with ``QEMU_MODULE_DIR`` pointing at its own modules (``ui-dbus`` among them) and
``-L`` at its own firmware directory; :meth:`Qemu.command` says so through ``env``, so
the same command works for ``saffron qemu -- ...`` and for ``start_qemu``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .guest import cache_root

QEMU10_PREFIX = Path(os.environ.get("SAFFRON_QEMU10_PREFIX") or cache_root() / "qemu10")
VERSIONS = ("7.2", "10.0")
"""The versions every QEMU end-to-end test runs against."""


@dataclass(frozen=True)
class Qemu:
    version: str
    """The major.minor this must be ('7.2', '10.0'): what test ids and reports say."""
    binary: str
    prefix: Path | None = None
    """None for the system's QEMU; else the directory the packages were unpacked into."""

    @property
    def id(self) -> str:
        return f"qemu{self.version}"

    @property
    def module_dir(self) -> Path | None:
        return None if self.prefix is None else self.prefix / "usr/lib/x86_64-linux-gnu/qemu"

    @property
    def data_dir(self) -> Path | None:
        return None if self.prefix is None else self.prefix / "usr/share/qemu"

    def command(self, *args: str) -> list[str]:
        """The command line that runs this QEMU with ``args``."""
        if self.prefix is None:
            return [self.binary, *args]
        return [
            "env",
            f"QEMU_MODULE_DIR={self.module_dir}",
            self.binary,
            "-L",
            str(self.data_dir),
            *args,
        ]

    def problem(self) -> str | None:
        """Why this QEMU cannot run here, in words; None when it can."""
        if self.prefix is not None and not Path(self.binary).exists():
            return (
                f"QEMU {self.version} is not unpacked in {self.prefix}: run `make setup` as root "
                "(scripts/setup-qemu10.sh takes it from Debian's bookworm-backports)"
            )
        if self.prefix is None and shutil.which(self.binary) is None:
            return f"{self.binary} (QEMU {self.version}) is missing: install qemu-system-x86"
        try:
            out = subprocess.run(
                self.command("--version"), capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"QEMU {self.version} ({self.binary}) does not run: {exc}"
        first = (out.stdout or out.stderr).splitlines()[:1]
        said = first[0] if first else f"exit status {out.returncode}"
        if out.returncode != 0 or f"version {self.version}." not in said:
            return f"{self.binary} is not QEMU {self.version}: {said}"
        return None


def qemu(version: str) -> Qemu:
    """The QEMU of that version: the system's 7.2, or 10.0 from its private prefix."""
    if version == "7.2":
        return Qemu("7.2", "qemu-system-x86_64")
    if version == "10.0":
        return Qemu("10.0", str(QEMU10_PREFIX / "usr/bin/qemu-system-x86_64"), QEMU10_PREFIX)
    raise ValueError(f"no QEMU {version} here; known: {', '.join(VERSIONS)}")
