"""Producers: what makes the frames Saffron shows (the demo scene, the test pattern, QEMU).

Each talks to saffron.display only: the producer interface is all it knows of Saffron.
"""
