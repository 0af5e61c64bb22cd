"""The SPICE front end: remote-viewer, virt-manager and spice-html5 watch Saffron.

Sans-IO protocol code (bytes in, events out), then a thin asyncio layer:

- ``wire``: numbers, message layouts, the bounded message reader, ``ProtocolError``
- ``link``: the link handshake and the RSA ticket
- ``channel``: framing, ACK window, ping/pong shared by all channels
- ``main``, ``display``, ``inputs``, ``cursor``: one state machine per channel
- ``websocket``: SPICE inside a WebSocket (wsproto), for spice-html5
- ``viewer``: a display channel as a broadcast Viewer (surfaces, stream, refresh)
- ``session``: a client's session: main/inputs/cursor handlers and its video clock
- ``server``: ``SpiceServer``: sockets, TLS, aiohttp WebSockets, sessions
"""
