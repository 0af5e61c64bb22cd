"""The web front end: the viewer page (WebCodecs into a canvas), its WebSocket, sign-in.

It shares with the SPICE front end only what saffron.net holds; it never imports saffron.spice.
"""
