"""
Twisted's stock FTP server, as C{twistd ftp} builds it, for bench/ftp:
C{twisted.protocols.ftp.FTPFactory} over C{FTPRealm} with one user whose
home is C{BENCH_HOME} (C{twistd ftp} can only put homes under C{/home}).
Nothing of Twisted's is patched, except, with C{BENCH_NODELAY=1}, that the
control connection gets TCP_NODELAY (the one change the issue measured).
The checker encodes the str credentials Twisted's FTP passes (its in-memory
checker keys users by bytes, so no stock login succeeds otherwise).

Settings from the environment: C{BENCH_HOME}, C{BENCH_PORT}, C{BENCH_USER},
C{BENCH_PASSWORD}, C{BENCH_NODELAY}. Run::

    twistd -n --pidfile= -y bench/ftp/twisted_stock.tac
"""

import os

from twisted.application import service, strports
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.protocols import ftp

home = os.environ["BENCH_HOME"]
user = os.environ["BENCH_USER"]


class Realm(ftp.FTPRealm):
    def getHomeDirectory(self, avatarId):
        return ftp.filepath.FilePath(home)


class Checker(InMemoryUsernamePasswordDatabaseDontUse):
    # Twisted's FTP hands str credentials to the checker, whose table is
    # keyed by bytes: no user could log in. Encoded here, nothing else.
    def requestAvatarId(self, credentials):
        credentials.username = credentials.username.encode()
        credentials.password = credentials.password.encode()
        return super().requestAvatarId(credentials)


checker = Checker(**{user: os.environ["BENCH_PASSWORD"].encode()})
factory = ftp.FTPFactory(Portal(Realm(home), [checker]))
if os.environ.get("BENCH_NODELAY") == "1":
    _made = ftp.FTP.connectionMade

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        _made(self)

    ftp.FTP.connectionMade = connectionMade

application = service.Application("twisted-stock-ftp")
strports.service(
    f"tcp:{os.environ['BENCH_PORT']}:interface=127.0.0.1", factory
).setServiceParent(application)
