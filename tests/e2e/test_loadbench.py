"""Fan-out and idle, measured on the real server: the numbers are the bench's; here
only what must hold whatever the machine: one encode for many viewers, none for none."""

from __future__ import annotations

from saffron.bench import fanout


def test_many_viewers_share_one_encode() -> None:
    rows = fanout.fanout(counts=(1, 10), seconds=3, fps=15, size="640x360")
    one, ten = rows
    # Ten viewers each got frames, and the server encoded about as many as for one.
    assert ten["min_viewer_fps"] > 0
    assert ten["encoded_frames"] < 2 * one["encoded_frames"]


def test_no_viewer_no_encode_and_a_still_picture_sends_nothing_more() -> None:
    no_viewer, still = fanout.idle(seconds=3)
    assert no_viewer["frames_encoded"] == 0
    assert still["frames_sent_after_settle"] == 0
