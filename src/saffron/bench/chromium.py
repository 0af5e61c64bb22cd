"""Debian's Chromium, headless, as the benches and the end-to-end tests drive it.

Only where it is and how it is started: what a page does is the caller's business.
"""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
"""Debian's package: Playwright drives it, no browser download."""

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]
"""No sandbox (root in a container), no GPU, nothing fetched from outside; sound plays
without a gesture."""
