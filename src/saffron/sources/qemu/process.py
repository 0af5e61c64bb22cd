"""Starting QEMU with its display on a private D-Bus bus, and stopping it.

Process control only: the command line, the private ``dbus-daemon``, process
groups and the parent-death signal. Attaching to the display is :mod:`.attach`'s.
"""

from __future__ import annotations

import logging
import select
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from .errors import QemuError

log = logging.getLogger("saffron.qemu")


def _die_with_us(argv: list[str], enabled: bool) -> list[str]:
    """``argv`` run so that it gets SIGTERM if the thread that started it ends.

    util-linux's ``setpriv --pdeathsig`` sets the parent-death signal and execs
    the program (same pid); without setpriv the command is left as it is.
    """
    setpriv = shutil.which("setpriv") if enabled else None
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


class DBusDaemon:
    """A private ``dbus-daemon`` (session configuration) listening in ``directory``."""

    def __init__(self, directory: Path, timeout: float = 10.0, die_with_us: bool = True) -> None:
        exe = shutil.which("dbus-daemon")
        if exe is None:
            raise QemuError("dbus-daemon is not installed (Debian: apt-get install dbus-daemon)")
        self.directory = directory
        argv = [
            exe,
            "--session",
            "--nofork",
            "--nopidfile",
            "--print-address=1",
            f"--address=unix:path={directory / 'bus.sock'}",
        ]
        self.log_path = directory / "dbus-daemon.log"
        with open(self.log_path, "ab") as errors:
            self.process = subprocess.Popen(
                _die_with_us(argv, die_with_us),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                process_group=0,  # a Ctrl-C meant for Saffron must not kill the bus first
            )
        assert self.process.stdout is not None
        ready = select.select([self.process.stdout], [], [], timeout)[0]
        line = self.process.stdout.readline().strip() if ready else ""
        if not line:
            self.stop()
            raise QemuError("dbus-daemon did not start")
        self.address = line
        log.debug("private D-Bus bus at %s (pid %d)", line, self.process.pid)

    def stop(self, timeout: float = 5.0) -> None:
        _end_process(self.process, timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _end_process(process: subprocess.Popen[Any], timeout: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


AUDIODEV_ID = "saffron"
"""The id of the ``-audiodev dbus`` that ``--audio`` adds when QEMU's arguments have none
(a sound card names it: ``-device AC97,audiodev=saffron``)."""


def dbus_audiodev(qemu_argv: Sequence[str]) -> str | None:
    """The id of the first ``-audiodev dbus,id=…`` in QEMU's arguments, or None."""
    args = list(qemu_argv)
    for i, arg in enumerate(args):
        flag = "-" + arg.lstrip("-")
        value = None
        if flag == "-audiodev" and i + 1 < len(args):
            value = args[i + 1]
        elif flag.startswith("-audiodev="):
            value = flag.split("=", 1)[1]
        if value is None:
            continue
        parts = value.split(",")
        kind = parts[0]
        opts = dict(p.partition("=")[::2] for p in parts[1:])
        if kind.startswith("driver="):  # -audiodev driver=dbus,id=X
            kind = kind.split("=", 1)[1]
        elif "driver" in opts:
            kind = opts["driver"]
        if kind == "dbus" and opts.get("id"):
            return opts["id"]
    return None


CLIPBOARD_ARGS = (
    "-chardev",
    "qemu-vdagent,id=saffron-vdagent,clipboard=on",
    "-device",
    "virtio-serial",
    "-device",
    "virtserialport,chardev=saffron-vdagent,name=com.redhat.spice.0",
)
"""What ``--clipboard`` adds: QEMU's own agent end with its clipboard on, on the port a
guest's spice-vdagent opens. The D-Bus display's ``Clipboard`` passes what it carries."""


def has_vdagent(qemu_argv: Sequence[str]) -> bool:
    """Whether QEMU's arguments already make a ``qemu-vdagent`` chardev."""
    return any(a.startswith("qemu-vdagent") for a in qemu_argv)


def with_dbus_display(
    qemu_argv: Sequence[str], dbus_address: str, *, audio: bool = False, clipboard: bool = False
) -> list[str]:
    """QEMU's command line with ``-display dbus,addr=...`` in place of any other display.

    Options of a ``-display dbus,...`` already there (``gl=on``, ``rendernode=``)
    are kept; ``-nographic`` and ``-daemonize`` are dropped (the first conflicts
    with a display, the second would hide QEMU from us). With ``audio`` the display
    carries the guest's sound: the ``dbus`` audiodev the arguments define, else one
    added with the id :data:`AUDIODEV_ID`. With ``clipboard`` the guest gets QEMU's
    clipboard agent port (:data:`CLIPBOARD_ARGS`) unless the arguments make one.
    """
    if not qemu_argv:
        raise ValueError("no QEMU command")
    out = [qemu_argv[0]]
    kept: list[str] = []
    args = list(qemu_argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        flag = "-" + arg.lstrip("-")
        value: str | None = None
        if flag == "-display" and i + 1 < len(args):
            value, i = args[i + 1], i + 2
        elif flag.startswith("-display="):
            value, i = flag.split("=", 1)[1], i + 1
        elif flag == "-nographic":
            log.warning(
                "dropping QEMU's -nographic: the display goes to Saffron"
                " (add -serial mon:stdio to keep the console on the terminal)"
            )
            i += 1
            continue
        elif flag == "-daemonize":
            log.warning("dropping QEMU's -daemonize: Saffron keeps QEMU as its child")
            i += 1
            continue
        else:
            out.append(arg)
            i += 1
            continue
        kind, _, opts = value.partition(",")
        if kind == "dbus":
            kept += [o for o in opts.split(",") if o and not o.startswith(("addr=", "p2p="))]
        else:
            log.info("replacing QEMU's -display %s with the D-Bus display", value)
    if audio and not any(o.startswith("audiodev=") for o in kept):
        audiodev = dbus_audiodev(qemu_argv)
        if audiodev is None:
            audiodev = AUDIODEV_ID
            out += ["-audiodev", f"dbus,id={audiodev}"]
        kept.append(f"audiodev={audiodev}")
    if clipboard and not has_vdagent(qemu_argv):
        out += CLIPBOARD_ARGS
    addr = dbus_address.replace(",", ",,")  # QEMU's option syntax doubles commas
    out += ["-display", ",".join(["dbus", f"addr={addr}", *kept])]
    return out


class QemuProcess:
    """A QEMU started by :func:`start_qemu`, with its private bus."""

    def __init__(
        self,
        process: subprocess.Popen[Any],
        address: str,
        argv: list[str],
        bus: DBusDaemon | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.process = process
        self.address = address
        self.argv = argv
        self.bus = bus
        self.workdir = workdir

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """None while QEMU runs, then its exit status (negative: killed by that signal)."""
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """End QEMU (SIGTERM, then SIGKILL) and its bus."""
        _end_process(self.process, timeout)
        if self.bus is not None:
            self.bus.stop(timeout)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> QemuProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_qemu(
    qemu_argv: Sequence[str],
    *,
    dbus_address: str | None = None,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    env: dict[str, str] | None = None,
    die_with_us: bool = True,
    audio: bool = False,
    clipboard: bool = False,
) -> QemuProcess:
    """Run QEMU with its display on D-Bus.

    Without ``dbus_address`` a private ``dbus-daemon`` is started for it (and
    stopped with it); with one, QEMU joins that bus (e.g. to restart a VM on
    the bus a reattaching source watches).

    QEMU and its bus run in their own process group, so a Ctrl-C meant for
    Saffron reaches them only as Saffron's orderly stop. With ``die_with_us``
    they get SIGTERM when the *thread* that called this ends (Linux's
    parent-death signal), so a crashed Saffron leaves no VM behind: call it
    from the main thread or one that lives as long.
    """
    workdir: Path | None = None
    bus: DBusDaemon | None = None
    if dbus_address is None:
        workdir = Path(tempfile.mkdtemp(prefix="saffron-qemu-"))
        try:
            bus = DBusDaemon(workdir, die_with_us=die_with_us)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        dbus_address = bus.address
    argv = with_dbus_display(qemu_argv, dbus_address, audio=audio, clipboard=clipboard)
    log.info("starting %s", shlex.join(argv))
    try:
        process = subprocess.Popen(
            _die_with_us(argv, die_with_us),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            process_group=0,
        )
    except OSError as exc:
        if bus is not None:
            bus.stop()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        raise QemuError(f"cannot run {argv[0]}: {exc}") from exc
    return QemuProcess(process, dbus_address, argv, bus, workdir)
