"""SPICE as sans-IO state machines: bytes in, events and bytes out.

- ``wire``: numbers, message layouts, the bounded message reader, ``ProtocolError``
- ``link``: the link handshake and the RSA ticket
- ``channel``: framing, the ACK window, ping and pong, shared by every channel
- ``main_channel``, ``display_channel``, ``inputs_channel``, ``cursor_channel``:
  one state machine per SPICE channel
- ``websocket``: SPICE inside a WebSocket (wsproto), for spice-html5

Every message layout and every handshake can be tested and fuzzed here without
a socket. Nothing in this package knows sockets, the event loop, sessions, the
broadcast or the server: the asyncio layer in :mod:`saffron.spice` feeds bytes
in, writes what comes out and decides what to do with the events. The
import-linter contract in ``pyproject.toml`` holds it to that: this package
imports nothing else of ``saffron.spice``, nor ``asyncio``.
"""
