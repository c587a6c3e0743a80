"""A live call: a sender streams keypoint packets, a receiver animates the sender's source image.

Modules: ``link`` (the interface between the two ends, and an in-process pair), ``transport``
(WebRTC data channels with HTTP signalling), ``session`` (the set-up both ends agree on), ``sender``,
``receiver``, ``viewer`` (the page a receiver serves). ``python -m kpflow.call`` is the CLI.
"""
