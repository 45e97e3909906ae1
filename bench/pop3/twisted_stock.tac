"""
Twisted's stock POP3 server, as C{twistd mail} builds it, for bench/pop3.

C{twisted.mail.protocols.POP3Factory} / C{VirtualPOP3} over a
C{twisted.mail.maildir.MaildirDirdbmDomain}, with the least patching that
lets it serve a maildir on Python 3 (Twisted 26.10), listed in full:

 1. C{MaildirMailbox.getMessage} opens the message file in text mode, so
    RETR hands C{str} chunks to C{transformChunk}, which fails on
    C{str.replace(b"\\n", ...)}: RETR never completes. Patched to open it
    in binary mode (C{"rb"}). Nothing else in the class is changed.
 2. C{twistd mail --maildirdbmdomain=NAME=PATH --user=U=P} cannot be used
    at all: C{--user} stops start-up with C{TypeError: DirDBM key must be
    bytes} (the option hands C{str} to the dirdbm), and the domain is
    registered under the C{str} NAME while C{VirtualPOP3} looks portals up
    by C{bytes}, so no login could succeed anyway. Not patched: this file
    builds the same objects itself with C{bytes} names (the domain also
    under C{b""}, so C{USER alice} without C{@domain} finds it).
 3. Only with C{BENCH_NODELAY=1} (the default): C{VirtualPOP3.connectionMade}
    also sets TCP_NODELAY, as appnet and Dovecot do. Without it, the
    one-write status line followed by the message body meets Nagle's
    algorithm and the client's delayed ACK.

Reads its settings from the environment (run.py sets them):
C{BENCH_MAILDIR_ROOT} (holds C{<user>/cur} ...), C{BENCH_PORT},
C{BENCH_USER}, C{BENCH_PASSWORD}, C{BENCH_NODELAY}. Listens on
127.0.0.1 only. Run::

    twistd -n --pidfile= -y bench/pop3/twisted_stock.tac
"""

import os

from twisted.application import service, strports
from twisted.mail import mail, maildir, protocols


def _binary_get_message(self, i):
    return open(self.list[i], "rb")


maildir.MaildirMailbox.getMessage = _binary_get_message


class NoDelayVirtualPOP3(protocols.VirtualPOP3):
    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        protocols.VirtualPOP3.connectionMade(self)


root = os.environ["BENCH_MAILDIR_ROOT"]
port = int(os.environ["BENCH_PORT"])
user = os.environ.get("BENCH_USER", "alice").encode()
password = os.environ.get("BENCH_PASSWORD", "bench-pw").encode()
nodelay = os.environ.get("BENCH_NODELAY", "1") == "1"

mail_service = mail.MailService()
domain = maildir.MaildirDirdbmDomain(mail_service, os.path.abspath(root))
mail_service.addDomain(b"localhost", domain)
mail_service.addDomain(b"", domain)
domain.addUser(user, password)

factory = mail_service.getPOP3Factory()
factory.noisy = False
if nodelay:
    factory.protocol = NoDelayVirtualPOP3

application = service.Application("twisted-stock-pop3")
mail_service.setServiceParent(application)
strports.service(f"tcp:{port}:interface=127.0.0.1", factory).setServiceParent(application)
