"""Publishing the broadcast to a WebRTC media server over WHIP (RFC 9725).

A media server (Janus through simple-whip-server, MediaMTX, LiveKit...) fans the
picture out to thousands of browsers; to Saffron it is one more viewer of the
broadcast (:mod:`.viewer`), fed the packets Saffron already encodes, packetized as
RTP by aiortc: no second encode. View only: no input comes back this way.

- :mod:`.sdp`: the pure parts (the H.264 profile-level-id of an SPS, the offer's
  fmtp, the retry backoff, the resource's address).
- :mod:`.viewer`: the viewer, its aiortc track and the publisher that keeps it up.
"""
