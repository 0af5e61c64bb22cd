"""Measurement: Saffron's figures, and the clients and processes the tests watch it with.

Owns ``saffron bench`` (the frame path against the bare encoder, the slow link,
fan-out and idle, the soak, Saffron beside spice-server), the measuring
clients (a web viewer and a light SPICE viewer that acknowledge what they
get), starting and stopping a Saffron subprocess, percentiles, the test guest
and the spice-gtk viewer script.

It sits above the product: it may import any ``saffron`` module, and no
product module may import it. The ``saffron bench`` subcommand reaches the
command line through the ``saffron.commands`` entry point (see cli.py), not
through an import.
"""
