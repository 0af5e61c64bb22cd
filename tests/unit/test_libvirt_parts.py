"""`serve --libvirt`'s pure parts: reading a domain's XML for its D-Bus display, the words
said, and a bus that shuts us out at authentication (a refusal, not "not there yet")."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from saffron.sources.qemu.dbus import connect_bus
from saffron.sources.qemu.errors import NotThere, Refused
from saffron.sources.qemu.libvirt import (
    P2P_XML,
    Graphics,
    no_dbus_words,
    parse_graphics,
    refused_words,
)

RUNNING_BUS = """<domain type='qemu' id='7'>
  <name>vm1</name>
  <devices>
    <graphics type='dbus' address='unix:path=/run/libvirt/qemu/dbus/7-vm1-dbus.sock'/>
    <video><model type='vga' vram='16384' heads='1' primary='yes'/></video>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+0:+0</label>
    <imagelabel>+0:+0</imagelabel>
  </seclabel>
</domain>"""


def test_a_running_domain_on_its_own_bus() -> None:
    g = parse_graphics(RUNNING_BUS)
    assert g.dbus and not g.p2p
    assert g.address == "unix:path=/run/libvirt/qemu/dbus/7-vm1-dbus.sock"
    assert g.qemu_user == "root (uid 0)"  # +0 is root everywhere


def test_a_p2p_domain_and_one_without_dbus() -> None:
    p2p = parse_graphics(
        "<domain><devices><graphics type='spice'/><graphics type='dbus' p2p='yes'/>"
        "</devices></domain>"
    )
    assert p2p == Graphics(True, p2p=True, others=("spice",))
    none = parse_graphics("<domain><devices><graphics type='vnc' port='-1'/></devices></domain>")
    assert not none.dbus
    words = no_dbus_words("vm1", none)
    assert "'vm1' has no D-Bus display (its graphics: vnc)" in words
    assert P2P_XML in words
    assert "(its graphics: none)" in no_dbus_words("vm1", parse_graphics("<domain/>"))


def test_the_dac_label_names_the_qemu_user() -> None:
    xml = RUNNING_BUS.replace("+0:+0</label>", "+54321:+54321</label>")
    assert parse_graphics(xml).qemu_user.endswith("uid 54321")  # a name if it has one
    named = RUNNING_BUS.replace("+0:+0</label>", "libvirt-qemu:kvm</label>")
    g = parse_graphics(named)
    assert g.qemu_user == "libvirt-qemu"
    said = refused_words(g)
    assert said.startswith(": run Saffron as the domain's QEMU user, libvirt-qemu")
    assert said.endswith(P2P_XML)
    unknown = refused_words(None)
    assert unknown == f": run Saffron as the domain's QEMU user, or give the domain {P2P_XML}"


def _shut_out_server(path: str) -> threading.Thread:
    """A 'bus' that reads the NUL byte and the AUTH line, then hangs up (as a
    dbus-daemon does to a user its policy does not take)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        conn.recv(1024)
        conn.close()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_a_bus_that_hangs_up_at_authentication_is_a_refusal() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bus.sock")
        t = _shut_out_server(path)
        with pytest.raises(Refused, match=f"shut Saffron \\(uid {os.getuid()}\\) out"):
            connect_bus(f"unix:path={path}", 5)
        t.join(5)
        with pytest.raises(NotThere):  # nobody listens any more: not there, not refused
            connect_bus(f"unix:path={path}", 5)
