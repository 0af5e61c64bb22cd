"""The SPICE front end: remote-viewer, virt-manager and spice-html5 watch Saffron.

The sans-IO protocol (bytes in, events out) is the package
:mod:`saffron.spice.protocol`: wire layouts, the link handshake, one state
machine per channel (``main_channel``, ``display_channel``, ``inputs_channel``,
``cursor_channel``) and SPICE inside a WebSocket. Around it, a thin asyncio layer:

- ``server``: ``SpiceServer``: sockets, TLS, aiohttp WebSockets, connections, sessions
- ``session``: a client's session: main/inputs/cursor handlers and its video clock
- ``viewer``: ``SpiceViewer``, a display channel as a broadcast Viewer (surfaces,
  stream, sharp refreshes)
- ``damage``: what changed between frames, for the viewers' stream clips
- ``ports``: what the server, its connections and the handlers see of each other
- ``ticket_keys``: fresh RSA ticket keys, made ahead of need by a worker thread

The protocol package imports nothing of the asyncio layer, and the handlers do
not import the server (import-linter contracts in ``pyproject.toml``). Nothing
here imports the web front end: what both share is in :mod:`saffron.net`.
"""
