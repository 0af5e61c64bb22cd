"""Build the test guest: a Debian kernel and a busybox initramfs, made at test time.

Nothing binary is committed. The first run downloads two Debian packages with
``apt-get download`` (the versioned ``linux-image-*`` package that
``linux-image-amd64`` depends on, and ``busybox-static``), takes out the few
files it needs (the kernel, the ``evdev`` module, the static busybox) and packs
an initramfs (cpio "newc", gzip) written by this module. Later runs reuse the
cache (``.cache/guest/`` at the top of a source checkout, which git ignores;
elsewhere ``$XDG_CACHE_HOME/saffron/guest``).

The guest's ``/init`` (busybox sh), booted with ``vga=0x344`` (a 1024x768,
32 bpp VESA framebuffer; with QEMU's VGA BIOS ``vga=0x318`` gives 24 bpp):

* moves a band of fresh random pixels down the top of ``/dev/fb0`` (and back
  to the top), so that frames keep changing;
* reads the keyboard's ``/dev/input/event*`` and, for every key pressed, fills
  the key strip (32 full-width rows starting at row ``KEY_ROW``) with the pixel
  B=evdev code & 0xff, G=0x5A, R=0xA5 (a viewer sees a key arrive as a colour
  that names it: Up, evdev 103, is B=0x67) and writes ``key CODE`` on the
  console line below it and on the serial port;
* plays a tone of ``TONE_HZ`` on the PC speaker (the ``pcspkr`` driver's input
  device) when ``TONE_ON_KEY`` (T) is pressed, just before it paints the key
  strip, and stops it on ``TONE_OFF_KEY`` (Y): QEMU hears it when its
  ``isa-pcspk`` has an audiodev;
* with an AC97 sound card (``-device AC97,audiodev=…``) loads its ALSA driver and OSS
  emulation (:data:`SOUND_MODULES`) and, when ``MIC_KEY`` (R) is pressed, records
  ``MIC_BYTES`` from ``/dev/dsp`` (OSS's default: 8 kHz, unsigned 8-bit, mono) and
  prints them in hex on the serial port, 32 a line after ``mic``, then
  ``saffron-guest: mic done``: what the guest heard of the host's microphone;
* prints ``saffron-guest: ready`` on the serial port once it waits for keys;
* with a virtio-serial port named ``com.redhat.spice.0`` (QEMU's ``qemu-vdagent``
  chardev) runs a tiny clipboard agent (``guest_agent.c``, built static with the
  host's gcc): text the host puts on the clipboard is printed on the serial port as
  ``saffron-guest: clipboard TEXT``, and ``CLIPBOARD_KEY`` (C) makes the guest grab
  the clipboard with ``GUEST_TEXT`` and a count (``saffron-guest: grabbed TEXT``);
* with a virtio-gpu display (``-device virtio-vga``) loads its DRM driver (the
  modules in :data:`VIRTIO_GPU_MODULES`, with what they depend on) before it opens
  ``/dev/fb0``, and prints ``saffron-guest: mode WxH`` on the serial port whenever
  the connector's preferred mode changes (the first line of
  ``/sys/class/drm/card0-Virtual-1/modes``: what the host's ``SetUIInfo`` asked
  for), and on the screen in the console's text. The kernel's fbdev emulation then
  shows that mode when it fits the framebuffer it made at boot (see
  :data:`VIRTIO_XRES`), so the picture follows too. Linux 6.1's fbdev emulation does
  not pass on what ``dd`` writes into ``/dev/fb0`` there (the console's text it does),
  so on virtio-gpu the band and the key strip stay black.

The tests and ``saffron bench --full`` boot it under QEMU. Run it
(``python -m saffron.bench.guest``) to build (or find) the guest and print the
two paths.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path


def cache_root() -> Path:
    """The checkout's .cache (src/saffron/bench/ is three levels below it), else the user's."""
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").exists():
        return checkout / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "saffron"


DEFAULT_CACHE = cache_root() / "guest"

WIDTH, HEIGHT = 1024, 768
KEY_ROW = 608
"""First framebuffer row of the key strip (32 rows, full width)."""
KEY_ROWS = 32
KEY_MARK = (0x5A, 0xA5)
"""G and R of a key-strip pixel; B is the evdev key code."""
BAND_ROWS_MAX = 544
"""The moving band stays above this row."""
TONE_HZ = 440
"""The PC speaker's tone (the PIT divides 1193182 Hz by 2711: 440.1 Hz)."""
TONE_ON_KEY = 20
"""evdev code of T: starts the tone, in the same instant as the key strip's colour."""
TONE_OFF_KEY = 21
"""evdev code of Y: stops it."""

MIC_KEY = 19
"""evdev code of R: the guest records ``MIC_BYTES`` of its sound card's input."""
MIC_RATE = 8000
"""OSS's default capture format: 8000 Hz, unsigned 8-bit, mono."""
MIC_BYTES = 8000
"""One second at OSS's default format."""
AC97_PCI_ID = "0x2415"
"""The 82801AA AC97's PCI device id (vendor 0x8086), what QEMU's ``AC97`` is."""
SOUND_MODULES = ("snd_intel8x0", "snd_pcm_oss")
"""Loaded (with their dependencies, in order) when the guest has an AC97 card: its ALSA
driver and the OSS emulation whose ``/dev/dsp`` busybox's ``head`` can read."""
SOUND_MODULE_DIRS = (
    "/kernel/sound/",
    "/kernel/sound/core/",
    "/kernel/sound/core/oss/",
    "/kernel/sound/pci/",
    "/kernel/sound/pci/ac97/",
)

CLIPBOARD_KEY = 46
"""evdev code of C: the guest's agent grabs the clipboard with :data:`GUEST_TEXT`."""
GUEST_TEXT = "Grüße aus dem Gast ✓"
"""What the guest's agent copies (then a space and how many times it did)."""
AGENT_SOURCE = Path(__file__).with_name("guest_agent.c")

VIRTIO_GPU_MODULES = ("virtio_pci", "virtio_gpu")
"""Loaded (with their dependencies, in order) when the guest has a virtio-gpu device."""
VIRTIO_GPU_PCI_ID = "0x1050"
"""virtio-gpu's PCI device id (vendor 0x1af4), as /sys/bus/pci/devices/*/device says it."""
VIRTIO_XRES, VIRTIO_YRES = 1600, 1200
"""The first size to give a virtio-vga (``xres``/``yres``): the kernel's fbdev makes its
framebuffer that size at boot and later shows any preferred mode that fits in it, so
a guest resize can grow up to this."""

KERNEL_CMDLINE = (
    "console=ttyS0 quiet vga=0x344 logo.nologo vt.global_cursor_default=0 "
    "consoleblank=0 rdinit=/init"
)

INIT_SCRIPT = r"""#!/bin/sh
# Saffron's test guest: a moving band in /dev/fb0, and every key shown as a colour.
/bin/busybox --install -s
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
log() { echo "saffron-guest: $*" > /dev/console; }
insmod /lib/evdev.ko || log "evdev failed"
insmod /lib/pcspkr.ko || log "pcspkr failed"
agent=
if grep -qxE '@VIRTIOSERIAL@' /sys/bus/pci/devices/*/device 2>/dev/null; then
    for m in $(cat /lib/virtio-console/order); do
        grep -q "^$m " /proc/modules || insmod /lib/virtio-console/$m.ko || log "$m failed"
    done
    /bin/agent & agent=$!
fi
if grep -qx @VIRTIOGPU@ /sys/bus/pci/devices/*/device 2>/dev/null; then
    for m in $(cat /lib/virtio-gpu/order); do
        grep -q "^$m " /proc/modules || insmod /lib/virtio-gpu/$m.ko || log "$m failed"
    done
    (  # the preferred mode, printed whenever it changes
        last=
        while :; do
            for c in /sys/class/drm/card*-Virtual-1; do
                m=$(head -n 1 $c/modes 2>/dev/null)
                [ -n "$m" ] && [ "$m" != "$last" ] && {
                    log "mode $m"; last=$m
                    printf '\033[2;2Hsaffron-guest: mode %-12s' "$m" > /dev/tty1
                }
            done
            usleep 100000
        done
    ) &
fi
if grep -qx @AC97@ /sys/bus/pci/devices/*/device 2>/dev/null; then
    for m in $(cat /lib/sound/order); do insmod /lib/sound/$m.ko || log "$m failed"; done
fi
record() {  # a second of the sound card's input, in hex on the serial port
    head -c @MICBYTES@ /dev/dsp | od -An -tx1 -v -w32 | sed 's/^/mic/' > /dev/console
    log "mic done"
}
fb=/dev/fb0
i=0
while [ ! -e $fb ] && [ $i -lt 50 ]; do usleep 100000; i=$((i + 1)); done
size=$(cat /sys/class/graphics/fb0/virtual_size)
W=${size%,*}; H=${size#*,}
S=$(cat /sys/class/graphics/fb0/stride)
BPP=$(cat /sys/class/graphics/fb0/bits_per_pixel)
log "framebuffer ${W}x${H} stride $S bpp $BPP"
dd if=/dev/zero of=$fb bs=$S count=$H conv=notrunc 2>/dev/null

band() {  # 32 rows of fresh noise, 16 rows further down each time; the trail is cleared
    row=0; prev=-1
    while :; do
        dd if=/dev/urandom of=$fb bs=$S count=32 seek=$row conv=notrunc 2>/dev/null
        if [ $prev -ge 0 ]; then
            n=32; [ $row -gt $prev ] && n=$((row - prev))
            dd if=/dev/zero of=$fb bs=$S count=$n seek=$prev conv=notrunc 2>/dev/null
        fi
        prev=$row
        row=$(( (row + 16) % @BANDMAX@ ))
    done
}
band &
renice -n 10 -p $! >/dev/null 2>&1

kbd=
for d in /sys/class/input/event*; do
    case "$(cat $d/device/name)" in *eyboard*) kbd=/dev/input/${d##*/} ;; esac
done
spk=
for d in /sys/class/input/event*; do
    case "$(cat $d/device/name)" in *peaker*) spk=/dev/input/${d##*/} ;; esac
done
log "keyboard $kbd speaker $spk"
tone() {  # an input_event: zero time, EV_SND (0x12), SND_TONE (2), the frequency
    [ -n "$spk" ] && printf "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\022\0\002\0$1" > $spk
}
exec 3<$kbd  # one open file for good: evdev drops what a closed reader had queued
log ready
while :; do
    set -- $(dd bs=24 count=1 <&3 2>/dev/null | od -An -tu2 -v)
    [ "$9" = 1 ] && [ "${11}" = 1 ] || continue
    code=${10}
    [ "$code" = @TONEON@ ] && tone '@TONEBYTES@'
    [ "$code" = @TONEOFF@ ] && tone '\0\0\0\0'
    [ "$code" = @MICKEY@ ] && record &
    [ "$code" = @CLIPKEY@ ] && [ -n "$agent" ] && kill -USR1 $agent
    log "key $code"
    px=$(printf "\\$(printf %03o $((code & 255)))\\132\\245")
    yes "$px" | head -c $((S * @KEYROWS@)) | dd of=$fb bs=$S seek=@KEYROW@ conv=notrunc 2>/dev/null
    printf '\033[46;1Hkey %-6d' $code > /dev/tty1
done
"""


@dataclass(frozen=True)
class Guest:
    kernel: Path
    initramfs: Path
    cmdline: str = KERNEL_CMDLINE

    def with_depth(self, bpp: int) -> Guest:
        """The same guest in the 1024x768 VESA mode of ``bpp`` (32 or 24) bits per pixel.

        At 32 QEMU's VGA shows its video memory itself as the surface; at 24 it converts
        into a surface of its own, which QEMU 9.2 and later share through ScanoutMap. The
        key strip's colours are right at 32 only (its pattern is 4 bytes a pixel)."""
        modes = {32: "vga=0x344", 24: "vga=0x318"}
        cmdline = self.cmdline
        for mode in modes.values():
            cmdline = cmdline.replace(mode, modes[bpp])
        return replace(self, cmdline=cmdline)

    def qemu_args(self, serial_log: Path | None = None) -> list[str]:
        """QEMU options that boot this guest (add machine, memory, display yourself)."""
        args = ["-kernel", str(self.kernel), "-initrd", str(self.initramfs)]
        args += ["-append", self.cmdline]
        args += ["-serial", f"file:{serial_log}" if serial_log else "null"]
        return args


def _init_text() -> str:
    tone = "".join(f"\\{b:03o}" for b in TONE_HZ.to_bytes(4, "little"))
    return (
        INIT_SCRIPT.replace("@BANDMAX@", str(BAND_ROWS_MAX - 32))
        .replace("@TONEON@", str(TONE_ON_KEY))
        .replace("@TONEOFF@", str(TONE_OFF_KEY))
        .replace("@TONEBYTES@", tone)
        .replace("@KEYROWS@", str(KEY_ROWS))
        .replace("@KEYROW@", str(KEY_ROW))
        .replace("@VIRTIOGPU@", VIRTIO_GPU_PCI_ID)
        .replace("@AC97@", AC97_PCI_ID)
        .replace("@MICBYTES@", str(MIC_BYTES))
        .replace("@MICKEY@", str(MIC_KEY))
        .replace("@CLIPKEY@", str(CLIPBOARD_KEY))
        .replace("@VIRTIOSERIAL@", "|".join(VIRTIO_SERIAL_PCI_IDS))
    )


VIRTIO_SERIAL_PCI_IDS = ("0x1003", "0x1043")
"""virtio-serial's PCI device ids (transitional, modern): the guest then runs its agent."""
VIRTIO_CONSOLE_MODULES = ("virtio_pci", "virtio_console")
"""The virtio-serial driver (and what it depends on), for the clipboard agent's port."""

MODULE_TREES = ("virtio-gpu", "sound", "virtio-console")
"""The kernel modules' folders in the parts (each with its ``order``) and the initramfs."""

PARTS = ("vmlinuz", "evdev.ko", "pcspkr.ko", "busybox", *MODULE_TREES)
"""What the guest takes from the two packages."""


def _run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def _kernel_package() -> str:
    """The versioned linux-image package the linux-image-amd64 metapackage points at."""
    out = subprocess.run(
        ["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-" in line:
            return line.split(":", 1)[1].strip()
    raise RuntimeError("apt-cache knows no linux-image-amd64 (run apt-get update)")


def _download(package: str, where: Path) -> Path:
    argv = ["apt-get", "download", "-o", "APT::Sandbox::User=root", package]
    try:
        _run(argv, where)
    except RuntimeError:
        if os.geteuid() != 0:
            raise
        _run(["apt-get", "update"], where)  # lists missing or stale on a fresh machine
        _run(argv, where)
    debs = sorted(where.glob(f"{package}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {package} left no .deb")
    return debs[-1]


def _extract(deb: Path, wanted: dict[str, Path]) -> None:
    """Copy the members named by suffix in ``wanted`` out of a .deb's data (streamed)."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    found: set[str] = set()
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            for suffix, dest in wanted.items():
                if member.name.endswith(suffix) and suffix not in found:
                    src = tar.extractfile(member)
                    assert src is not None
                    dest.write_bytes(src.read())
                    found.add(suffix)
    proc.stdout.close()
    proc.wait()
    missing = set(wanted) - found
    if missing:
        raise RuntimeError(f"{deb.name} has no {', '.join(sorted(missing))}")


MODULE_DIRS = (
    "/kernel/drivers/virtio/",
    "/kernel/drivers/gpu/drm/",
    "/kernel/drivers/gpu/drm/virtio/",
    "/kernel/drivers/char/",
)
"""Where the kernel package keeps virtio-gpu's and virtio-serial's drivers and everything
they depend on."""


def _module_depends(data: bytes) -> list[str]:
    """The ``depends=`` of a module's .modinfo section (NUL-separated key=value strings)."""
    start = data.find(b"\0depends=")
    if start < 0:
        return []
    value = data[start + 9 : data.index(b"\0", start + 1)].decode()
    return [name.replace("-", "_") for name in value.split(",") if name]


def _extract_modules(
    deb: Path, roots: tuple[str, ...], dest: Path, dirs: tuple[str, ...] = MODULE_DIRS
) -> None:
    """Copy ``roots`` and the modules they depend on (all in ``dirs``) out of a kernel .deb
    into ``dest``, with ``order``: their names, dependencies first, as insmod needs them."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            name = member.name
            if not (member.isfile() and name.endswith(".ko")):
                continue
            if not name.rsplit("/", 1)[0].endswith(tuple(d.rstrip("/") for d in dirs)):
                continue
            src = tar.extractfile(member)
            assert src is not None
            found[name.rsplit("/", 1)[1][:-3].replace("-", "_")] = src.read()
    proc.stdout.close()
    proc.wait()
    order: list[str] = []

    def need(module: str) -> None:
        if module in order:
            return
        if module not in found:
            raise RuntimeError(f"{deb.name} has no module {module}")
        for dep in _module_depends(found[module]):
            need(dep)
        order.append(module)

    for root in roots:
        need(root)
    dest.mkdir(parents=True, exist_ok=True)
    for module in order:
        (dest / f"{module}.ko").write_bytes(found[module])
    (dest / "order").write_text(" ".join(order) + "\n")


def _fetch_parts(parts: Path) -> None:
    parts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parts) as tmp:
        where = Path(tmp)
        kpkg = _kernel_package()
        version = kpkg.removeprefix("linux-image-")
        kdeb = _download(kpkg, where)
        _extract(
            kdeb,
            {
                f"/boot/vmlinuz-{version}": where / "vmlinuz",
                "/kernel/drivers/input/evdev.ko": where / "evdev.ko",
                "/kernel/drivers/input/misc/pcspkr.ko": where / "pcspkr.ko",
            },
        )
        _extract_modules(kdeb, VIRTIO_GPU_MODULES, where / "virtio-gpu")
        _extract_modules(kdeb, SOUND_MODULES, where / "sound", SOUND_MODULE_DIRS)
        _extract_modules(kdeb, VIRTIO_CONSOLE_MODULES, where / "virtio-console")
        bdeb = _download("busybox-static", where)
        _extract(bdeb, {"./bin/busybox": where / "busybox"})
        for modules in MODULE_TREES:
            if (parts / modules).exists():
                shutil.rmtree(parts / modules)
        for name in PARTS:
            os.replace(where / name, parts / name)
        (parts / "kernel-package").write_text(kpkg + "\n")


class _Cpio:
    """A writer of cpio "newc" archives, the format the kernel unpacks."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        namez = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0]
        self.ino += 1
        self.out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self.out.write(namez)
        self.out.write(b"\0" * (-(110 + len(namez)) % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = self.out.getvalue()
        return data + b"\0" * (-len(data) % 512)


def _build_agent(out: Path) -> None:
    """Compile the guest's clipboard agent, static (the guest has no libc)."""
    text = GUEST_TEXT.replace("\\", "\\\\").replace('"', '\\"')
    argv = ["gcc", "-static", "-Os", "-s", f'-DGUEST_TEXT="{text}"', "-o", str(out)]
    _run([*argv, str(AGENT_SOURCE)], out.parent)


def _pack(parts: Path, init: str, agent: bytes) -> bytes:
    cpio = _Cpio()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "lib"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", (parts / "busybox").read_bytes(), 0o755)
    cpio.file("bin/agent", agent, 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("lib/evdev.ko", (parts / "evdev.ko").read_bytes())
    cpio.file("lib/pcspkr.ko", (parts / "pcspkr.ko").read_bytes())
    for modules in MODULE_TREES:
        cpio.dir(f"lib/{modules}")
        for module in sorted((parts / modules).iterdir()):
            cpio.file(f"lib/{modules}/{module.name}", module.read_bytes())
    cpio.file("init", init.encode(), 0o755)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


PARTS_MODULES = tuple(f"{tree}/order" for tree in MODULE_TREES)
"""Made by the download: their presence says the parts have these modules (parts fetched
before a set was added are fetched again)."""


def build_guest(cache: Path | None = None) -> Guest:
    """The guest's kernel and initramfs, built on first use and cached."""
    cache = cache or DEFAULT_CACHE
    parts = cache / "parts"
    if not all((parts / n).exists() for n in (*PARTS, *PARTS_MODULES)):
        _fetch_parts(parts)
    init = _init_text()
    modules = b"".join((parts / n).read_bytes() for n in ("evdev.ko", "pcspkr.ko", *PARTS_MODULES))
    agent_source = AGENT_SOURCE.read_bytes() + GUEST_TEXT.encode()
    digest = hashlib.sha256(init.encode() + modules + agent_source).hexdigest()[:12]
    initramfs = cache / f"initramfs-{digest}.cpio.gz"
    if not initramfs.exists():
        for old in cache.glob("initramfs-*.cpio.gz"):
            old.unlink()
        tmp = initramfs.with_suffix(".tmp")
        agent = cache / "agent"
        _build_agent(agent)
        tmp.write_bytes(_pack(parts, init, agent.read_bytes()))
        os.replace(tmp, initramfs)
    return Guest(kernel=parts / "vmlinuz", initramfs=initramfs)


def missing_tools() -> list[str]:
    """Host programs the build needs that are not installed."""
    return [t for t in ("apt-get", "apt-cache", "dpkg-deb", "gcc") if shutil.which(t) is None]


if __name__ == "__main__":
    guest = build_guest(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(guest.kernel)
    print(guest.initramfs)
