"""vxland: a userspace VXLAN (RFC 7348) tunnel endpoint.

Follow one frame in the order it travels:

* ``tap`` - the TAP device a frame is read from;
* ``datapath`` / ``native`` - the batch data path (pure-Python reference / C):
  classify, look up, encapsulate with ``wire``; and back: decapsulate, report
  the source as a sighting;
* ``fdb`` - the forwarding table's policy: learning, moves, static entries,
  ageing, flood lists;
* ``underlay`` - the UDP and raw sockets between VTEPs;
* ``daemon`` - the event loop that moves batches between them; ``control``
  and ``cli`` - the control socket and the ``vxland`` command.

``wire``, ``fdb`` and ``datapath`` are sans-IO: bytes and ``now`` in, decisions out.
"""

__version__ = "0.1.0"
