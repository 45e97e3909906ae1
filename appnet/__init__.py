"""
appnet: the Internet's application layer as one Twisted application.

Every protocol lives in its own package (C{appnet.pop3}, ...), each a Twisted
Protocol/Factory pair with a Deferred-based client, all sharing one account
database (L{appnet.accounts}), one mailbox store (L{appnet.mailbox}) and one
filesystem store (L{appnet.filesystem}).
"""

__version__ = "0.1.0"
