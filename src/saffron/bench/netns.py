"""Network namespaces for the benches and tests whose traffic must not touch the host's
own addresses: a fresh namespace with its loopback up (and, for WebRTC, an interface
with a private address: a ``dummy``, or a veth pair with both ends inside), removed
afterwards, also on failure. Needs root.

- :func:`namespace`: make one; :func:`exec_in`: the argv prefix that runs a command
  inside it (``ip netns exec``).
- :func:`entered`: the calling thread itself inside it, until the block ends: the
  sockets it opens, the threads it starts and the processes it spawns (with theirs) are
  in the namespace.
- :func:`shaped_namespace`: one whose loopback carries only so many kbit/s (``tc tbf``),
  for the slow-link bench.

Why a dummy interface: ICE stacks leave out loopback addresses (aioice, libnice), so
WebRTC peers inside a namespace with only ``lo`` would find no candidate; with the
dummy's address they meet there, and as the address is the namespace's own, the kernel
delivers their packets on its loopback: nothing leaves the namespace.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
"""setns(2)'s nstype for a network namespace."""

TBF_LATENCY_MS = 100
"""How long tbf may hold a packet before dropping it: the queue of a busy home
uplink, so a sender that overfills it loses packets as it would there."""

TBF_BURST = 32_000
"""Bytes the shaper lets through at once after an idle moment (the issue's link)."""


def missing() -> str | None:
    """Why no namespace can be made here, in words; None: one can."""
    if os.geteuid() != 0:
        return "it needs root for a network namespace"
    if shutil.which("ip") is None:
        return "it needs iproute2's ip for a network namespace"
    return None


def exec_in(name: str) -> list[str]:
    """The argv prefix that runs a command inside namespace ``name``."""
    return ["ip", "netns", "exec", name]


@contextmanager
def namespace(
    prefix: str = "saffron", *, address: str | None = None, lo_mtu: int | None = None
) -> Iterator[str]:
    """A fresh namespace ``PREFIX-<random>`` with its loopback up; with ``address``
    (e.g. ``10.203.0.1/24``) also an interface ``d0`` holding it (a dummy, or a veth:
    :func:`_add_interface`). Deleted afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        run = exec_in(name)
        lo = ["ip", "link", "set", "lo"]
        if lo_mtu is not None:
            lo += ["mtu", str(lo_mtu)]
        subprocess.run([*run, *lo, "up"], check=True)
        if address is not None:
            _add_interface(run, "d0")
            subprocess.run([*run, "ip", "addr", "add", address, "dev", "d0"], check=True)
            subprocess.run([*run, "ip", "link", "set", "d0", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def _add_interface(run: list[str], dev: str) -> None:
    """A ``dummy`` interface ``dev``; where the kernel has no dummy driver, a veth pair
    with both ends inside (``dev`` and ``devp``, both up): either way an interface
    that is up and running and not loopback, connected to nothing outside."""
    add = [*run, "ip", "link", "add", dev, "type"]
    if subprocess.run([*add, "dummy"], capture_output=True).returncode == 0:
        return
    peer = f"{dev}p"
    subprocess.run([*add, "veth", "peer", "name", peer], check=True)
    subprocess.run([*run, "ip", "link", "set", peer, "up"], check=True)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def entered(name: str) -> Iterator[None]:
    """The calling thread inside namespace ``name`` for the block, back home after it.

    Only this thread moves (setns(2) is per thread); what it starts meanwhile, threads
    and processes, stays inside for good."""
    with (
        open("/proc/thread-self/ns/net", "rb") as home,
        open(f"/run/netns/{name}", "rb") as target,
    ):
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


@contextmanager
def shaped_namespace(rate_kbit: int) -> Iterator[str]:
    """A fresh namespace whose loopback carries ``rate_kbit``; removed afterwards."""
    with namespace(lo_mtu=1500) as name:
        subprocess.run(
            [
                *exec_in(name),
                *("tc", "qdisc", "add", "dev", "lo", "root", "tbf"),
                *("rate", f"{rate_kbit}kbit", "burst", str(TBF_BURST)),
                *("latency", f"{TBF_LATENCY_MS}ms"),
            ],
            check=True,
        )
        yield name
