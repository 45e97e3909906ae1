"""
Twisted's stock mail service (twisted.mail), as ``twistd mail`` builds it,
for the SMTP benchmark: one Maildir domain ``localhost`` with user ``alice``.

``twistd mail --user`` crashes on Python 3 (DirDBM keys must be bytes), so
the user is added here with bytes keys; every patch is listed below and
changes no behaviour of the SMTP dialogue or of delivery.

Environment: BENCH_MAILDIR (maildir root), BENCH_PORT (SMTP port).
"""

import os

from twisted.application import internet, service
from twisted.cred import checkers
from twisted.mail import maildir, mail

root = os.environ["BENCH_MAILDIR"]
port = int(os.environ["BENCH_PORT"])

application = service.Application("twisted-stock-smtp")
svc = mail.MailService()
svc.setServiceParent(application)


class PatchedDomain(maildir.MaildirDirdbmDomain):
    """
    Python 3 patches: the user name arrives as bytes but the root is a
    str (C{os.path.join} refuses the mix), and C{startMessage} opens the
    message file in text mode but writes bytes. Same steps as upstream:
    write into tmp/, rename into new/ (no fsync, as upstream).
    """

    def userDirectory(self, name):
        if name not in self.dbm:
            return None
        directory = os.path.join(os.fsdecode(self.root), os.fsdecode(name))
        if not os.path.exists(directory):
            maildir.initializeMaildir(directory)
        return directory

    def startMessage(self, user):
        local, dom = user.dest.local, user.dest.domain
        directory = self.userDirectory(local)
        fname = os.fsdecode(maildir._generateMaildirName())
        filename = os.path.join(directory, "tmp", fname)
        return maildir.MaildirMessage(
            b"%s@%s" % (local, dom),
            open(filename, "wb"),
            filename,
            os.path.join(directory, "new", fname),
        )


domain = PatchedDomain(svc, root)
domain.dbm[b"alice"] = b"bench-pw"  # patch: DirDBM keys are bytes on Python 3
svc.addDomain(b"localhost", domain)
# As `twistd mail` does when no --auth is given: anonymous SMTP allowed.
svc.smtpPortal.registerChecker(checkers.AllowAnonymousAccess())
factory = svc.getSMTPFactory()
internet.TCPServer(port, factory, interface="127.0.0.1").setServiceParent(svc)
