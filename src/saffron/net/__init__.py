"""What both front ends need from the network and must share: which hosts and
origins a browser may reach Saffron through, and how fast an address may guess
the password. ``spice`` and ``web`` import this,
never each other."""
