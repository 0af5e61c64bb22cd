"""What both front ends need from the network and share, so that neither imports the other:

- limits.py: how many connections, from whom, for how long;
- admission.py: every connection's slot, its TLS handshake, its time to authenticate;
- tls.py: certificates;
- origin.py: which Host and Origin a browser may bring;
- passwords.py and guesses.py: comparing a password, and how often one address may guess;
- ratelimit.py: how many messages one connection may send;
- websocket.py: the aiohttp WebSocket both serve on the web port.

It knows neither SPICE nor the page.
"""
