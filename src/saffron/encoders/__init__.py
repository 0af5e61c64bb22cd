"""Encoders: a frame in, one compressed packet out, per codec (registry.py finds which work).

Below the broadcast: they know frames (saffron.display), never viewers or front ends.
"""
