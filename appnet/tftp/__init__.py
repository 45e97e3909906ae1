"""
TFTP (RFC 1350 with the option extensions of RFCs 2347, 2348, 2349 and 7440).

Twisted has no TFTP, so appnet writes its own, in three layers:

  - L{appnet.tftp.wire}: packets as frozen dataclasses, C{encode}/C{decode},
    netascii translation. Pure functions, standard library only.
  - L{appnet.tftp.machine}: the sans-IO transfer engines,
    L{Sender<appnet.tftp.machine.Sender>} and
    L{Receiver<appnet.tftp.machine.Receiver>}: datagrams and timer
    expiries in, actions out.
  - C{server.py} and C{client.py}: thin Twisted DatagramProtocols that own
    the sockets, the clock and the files, and drive the machines.

@see: L{appnet.tftp.machine} for how the Twisted layer drives a transfer.
"""
