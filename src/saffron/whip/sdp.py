"""The pure parts of a WHIP publish: what the offer must say, and when to try again."""

from __future__ import annotations

import re
from urllib.parse import urljoin

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0


def backoff(failures: int) -> float:
    """Seconds to wait before the next try after ``failures`` failures in a row:
    1, 2, 4 ... up to 30 s, so a media server that is down is not hammered and one
    that comes back is found within half a minute."""
    if failures <= 0:
        return 0.0
    return float(min(BACKOFF_FIRST_S * 2 ** (failures - 1), BACKOFF_MAX_S))


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (start codes of 3 or 4 bytes)."""
    return [u for part in data.split(b"\x00\x00\x01")[1:] if (u := part.rstrip(b"\x00"))]


def h264_profile_level_id(data: bytes) -> str | None:
    """The SDP profile-level-id (profile_idc, constraint flags, level_idc as six hex
    digits) of the first SPS in an Annex B access unit, or None without one."""
    for unit in nal_units(data):
        if unit[0] & 0x1F == 7 and len(unit) >= 4:
            return unit[1:4].hex()
    return None


def is_constrained_baseline(profile_level_id: str) -> bool:
    """Whether browsers and media servers take it as Constrained Baseline: profile 66
    with constraint_set1 (RFC 6184's 42 40, 42 c0, 42 e0 ...), or Main with
    constraint_set1 too (4d 40 ...: a stream a Constrained Baseline decoder reads)."""
    profile, flags = int(profile_level_id[0:2], 16), int(profile_level_id[2:4], 16)
    return profile in (0x42, 0x4D, 0x58) and bool(flags & 0x40)


def with_profile_level_id(sdp: str, profile_level_id: str) -> str:
    """``sdp`` with every H.264 fmtp's profile-level-id replaced by the stream's own."""
    return re.sub(
        r"(a=fmtp:\d+ [^\r\n]*profile-level-id=)[0-9A-Fa-f]{6}",
        lambda m: m.group(1) + profile_level_id,
        sdp,
    )


def resource_url(endpoint: str, location: str) -> str:
    """The WHIP resource's absolute address: ``Location`` may be relative (RFC 9725 §4.2)."""
    return urljoin(endpoint, location)
