"""A real libvirt for the tests: libvirtd and virtlogd started here (no systemd), and
domains that boot the test guest.

:func:`running_libvirtd` makes what Debian's ``libvirt-daemon-system`` would (the
``libvirt-qemu`` user and group, QEMU's log directory), starts ``virtlogd -d`` and
``libvirtd -d`` unless they already run, and stops only what it started. libvirtd gets
a config of its own that lets the read-only socket in without polkit (there is no
system bus here), so a Saffron run as the QEMU user can read a domain's bus address.
Needs root (as CI is).

:class:`Domain` defines a domain (``type='qemu'``, direct kernel/initrd boot of
saffron.bench.guest, ``<video><model type='vga'/>``, the serial port in a file) with a
D-Bus display, peer to peer or on its own bus, and undefines it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from saffron.bench.guest import Guest

URI = "qemu:///system"
QEMU_USER = "libvirt-qemu"
PACKAGES = "libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
LIBVIRTD_CONF = 'auth_unix_ro = "none"\n'
CONF_PREFIX = "saffron-libvirtd-"
"""The start of the directory the caller keeps libvirtd.conf in (tests/e2e/test_libvirt.py)."""


def virsh(*args: str, check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _answers() -> bool:
    try:
        virsh("version", timeout=10)
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return True


def _alive(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process runs."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _make_users() -> None:
    """The QEMU driver refuses to start without its user and group (as
    libvirt-daemon-system's postinst makes them)."""

    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    def exists(db: str, name: str) -> bool:
        return subprocess.run(["getent", db, name], capture_output=True).returncode == 0

    if not exists("group", "kvm"):
        run("groupadd", "--system", "kvm")
    if not exists("group", QEMU_USER):
        run("groupadd", "--system", QEMU_USER)
    if not exists("passwd", QEMU_USER):
        run(
            "useradd", "--system", "-g", "kvm", "-G", QEMU_USER, "-d", "/var/lib/libvirt",
            "-M", "-s", "/usr/sbin/nologin", "-c", "Libvirt Qemu", QEMU_USER,
        )  # fmt: skip


def _wait(test: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if test():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


@contextlib.contextmanager
def running_libvirtd(workdir: Path) -> Iterator[bool]:
    """libvirtd and virtlogd running; yields whether this libvirtd runs with our config
    (the read-only socket open to other users): started here, or left by a killed run."""
    missing = [p for p in ("libvirtd", "virtlogd", "virsh") if shutil.which(p) is None]
    if missing:
        raise RuntimeError(f"no {', '.join(missing)}: apt-get install {PACKAGES}")
    if os.geteuid() != 0:
        raise PermissionError("starting libvirtd needs root")
    _make_users()
    Path("/var/log/libvirt/qemu").mkdir(parents=True, exist_ok=True)
    started: list[int] = []
    ours = False
    try:
        if _alive(Path("/run/virtlogd.pid")) is None:
            subprocess.run(["virtlogd", "-d"], check=True)
            _wait(lambda: _alive(Path("/run/virtlogd.pid")), 10, "virtlogd")
            started.append(_alive(Path("/run/virtlogd.pid")) or 0)
        pid = _alive(Path("/run/libvirtd.pid"))
        if pid is not None and CONF_PREFIX in Path(f"/proc/{pid}/cmdline").read_text():
            ours = True  # left running by an earlier session that was killed: same config
        if not _answers():
            conf = workdir / "libvirtd.conf"
            conf.write_text(LIBVIRTD_CONF)
            subprocess.run(["libvirtd", "-d", "-f", str(conf)], check=True)
            _wait(_answers, 30, "libvirtd to answer")
            started.append(_alive(Path("/run/libvirtd.pid")) or 0)
            ours = True
        yield ours
    finally:
        for pid in reversed(started):  # libvirtd first, then virtlogd
            if pid <= 0:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(RuntimeError):
                _wait(lambda pid=pid: not _pid_runs(pid), 15, f"pid {pid} to stop")


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours (it daemonized, so it is not our child: it is reaped by init)
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


def guest_files(guest: Guest) -> Path:
    """The guest's kernel and initramfs where QEMU's user can read them (the tests' tmp
    directories are root's alone); the caller removes the directory."""
    where = Path(tempfile.mkdtemp(prefix="saffron-libvirt-"))
    where.chmod(0o755)
    for f in (guest.kernel, guest.initramfs):
        shutil.copy(f, where / f.name)
        (where / f.name).chmod(0o644)
    return where


@dataclass
class Domain:
    """A defined test domain."""

    name: str
    serial: Path

    def start(self) -> None:
        virsh("start", self.name)

    def destroy(self) -> None:
        virsh("destroy", self.name, check=False)

    def running(self) -> bool:
        return "running" in virsh("domstate", self.name, check=False)

    def dbus_address(self) -> str:
        import re

        m = re.search(r"<graphics type='dbus' address='([^']+)'", virsh("dumpxml", self.name))
        return m.group(1) if m else ""

    def serial_text(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except OSError:
            return ""

    def undefine(self) -> None:
        self.destroy()
        virsh("undefine", self.name, check=False)


QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
"""libvirt's namespace for ``<qemu:commandline>``: arguments passed to QEMU as they are."""


def domain_xml(
    name: str,
    guest: Guest,
    files: Path,
    serial: Path,
    graphics: str,
    qemu_args: tuple[str, ...] = (),
) -> str:
    passthrough = "".join(f"<qemu:arg value='{a}'/>" for a in qemu_args)
    commandline = f"<qemu:commandline>{passthrough}</qemu:commandline>" if qemu_args else ""
    return f"""<domain type='qemu' xmlns:qemu='{QEMU_NS}'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{files / guest.kernel.name}</kernel>
    <initrd>{files / guest.initramfs.name}</initrd>
    <cmdline>{guest.cmdline}</cmdline>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {graphics}
    <video><model type='vga'/></video>
    <serial type='file'><source path='{serial}'/></serial>
    <memballoon model='none'/>
  </devices>
  {commandline}
</domain>
"""


@contextlib.contextmanager
def defined_domain(
    name: str,
    guest: Guest,
    files: Path,
    graphics: str,
    *,
    start: bool = True,
    qemu_args: tuple[str, ...] = (),
) -> Iterator[Domain]:
    """A domain defined (and started) for one test, undefined afterwards; a stale one of
    the same name (an earlier run that died) is replaced; ``qemu_args`` go to QEMU as
    they are (what libvirt cannot say)."""
    virsh("destroy", name, check=False)
    virsh("undefine", name, check=False)
    serial = files / f"{name}-serial.log"
    xml = files / f"{name}.xml"
    xml.write_text(domain_xml(name, guest, files, serial, graphics, qemu_args))
    virsh("define", str(xml))
    dom = Domain(name, serial)
    try:
        if start:
            dom.start()
        yield dom
    finally:
        dom.undefine()
