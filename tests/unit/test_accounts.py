"""
Unit tests for appnet.accounts: hashes, the database file, the cred checker
and the realm.
"""

from __future__ import annotations

import json
import os
import stat

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface
from zope.interface.verify import verifyObject

from appnet import accounts
from appnet.accounts import (
    AccountChecker,
    AccountDatabase,
    AppnetRealm,
    hash_password,
    make_portal,
    plaintext_auth_allowed,
    valid_username,
    verify_password,
)
from appnet.errors import NoSuchUser, UserExists


class HashTests(SynchronousTestCase):
    """hash_password / verify_password."""

    def test_round_trip_and_salt(self) -> None:
        """A hash verifies its password only; two hashes of one password differ."""
        h1, h2 = hash_password("pw", n=16), hash_password("pw", n=16)
        self.assertNotEqual(h1, h2)
        self.assertTrue(verify_password("pw", h1))
        self.assertTrue(verify_password(b"pw", h2))
        self.assertFalse(verify_password("pW", h1))

    def test_default_cost_is_slow(self) -> None:
        """The default hash is scrypt with N >= 2**14 (slow by design)."""
        scheme, n, r, p, salt, digest = hash_password("pw").split("$")
        self.assertEqual(scheme, "scrypt")
        self.assertGreaterEqual(int(n), 1 << 14)

    def test_malformed_hash_never_matches(self) -> None:
        """Garbage in the hash field is a failed check, not an exception."""
        for bad in ("", "plain", "md5$x$y", "scrypt$a$b$c$d$e", "scrypt$16$8$1$!!$!!"):
            self.assertFalse(verify_password("pw", bad))

    def test_usernames(self) -> None:
        """Names are lowercase, digits, . _ -; nothing that escapes a directory."""
        for good in ("alice", "a.b", "x_1", "0day", "a-b"):
            self.assertTrue(valid_username(good), good)
        for bad in ("", "Alice", ".hidden", "-x", "a/b", "a..b", "a b", "x" * 65, "ä", "a\0"):
            self.assertFalse(valid_username(bad), bad)


class DatabaseTests(SynchronousTestCase):
    """AccountDatabase."""

    def setUp(self) -> None:
        self.patch(accounts, "SCRYPT_N", 16)
        d = self.mktemp()
        os.makedirs(d)
        self.path = os.path.join(d, "users.json")
        self.db = AccountDatabase(self.path)

    def test_add_list_passwd_del(self) -> None:
        """The user lifecycle, persisted in a 0600 file holding no plaintext."""
        self.db.add("alice", "s3cret", quota=1000)
        self.db.add("bob", "pw")
        self.assertEqual(self.db.names(), ["alice", "bob"])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        with open(self.path) as f:
            text = f.read()
        self.assertNotIn("s3cret", text)
        self.assertTrue(self.db.check_password("alice", "s3cret"))
        self.db.set_password("alice", "new")
        self.assertFalse(self.db.check_password("alice", "s3cret"))
        self.assertTrue(self.db.check_password("alice", "new"))
        self.assertEqual(self.db.quota("alice"), 1000)
        self.db.remove("bob")
        self.assertEqual(self.db.names(), ["alice"])
        self.assertRaises(UserExists, self.db.add, "alice", "x")
        self.assertRaises(NoSuchUser, self.db.remove, "bob")
        self.assertRaises(NoSuchUser, self.db.set_password, "bob", "x")
        self.assertRaises(ValueError, self.db.add, "Bad Name", "x")
        self.assertRaises(ValueError, self.db.add, "carol", "")

    def test_changes_seen_without_restart(self) -> None:
        """A second database object (another process) sees changes at once."""
        other = AccountDatabase(self.path)
        self.assertFalse(other.exists("alice"))
        self.db.add("alice", "pw")
        self.assertTrue(other.exists("alice"))
        self.db.remove("alice")
        self.assertFalse(other.exists("alice"))

    def test_default_quota(self) -> None:
        """Users without their own quota get the default."""
        db = AccountDatabase(self.path, default_quota=500)
        db.add("alice", "pw")
        self.assertEqual(db.quota("alice"), 500)

    def test_file_format(self) -> None:
        """The file is JSON with a scrypt hash per user."""
        self.db.add("alice", "pw")
        with open(self.path) as f:
            raw = json.load(f)
        self.assertTrue(raw["users"]["alice"]["password"].startswith("scrypt$"))


class CheckerTests(SynchronousTestCase):
    """AccountChecker and AppnetRealm through a Portal."""

    def setUp(self) -> None:
        self.patch(accounts, "SCRYPT_N", 16)
        d = self.mktemp()
        os.makedirs(d)
        self.db = AccountDatabase(os.path.join(d, "users.json"))
        self.db.add("alice", "pw")
        self.clock = MemoryReactorClock()
        self.results: list[tuple[str, bool]] = []
        self.checker = AccountChecker(
            self.db,
            failed_delay=2.0,
            reactor=self.clock,
            run_blocking=lambda f, *a: defer.maybeDeferred(f, *a),
            on_result=lambda user, ok: self.results.append((user, ok)),
        )

    def test_interface(self) -> None:
        """AccountChecker provides ICredentialsChecker."""
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))

    def test_success(self) -> None:
        """Right password: the avatar id is the user name, at once."""
        d = self.checker.requestAvatarId(UsernamePassword(b"alice", b"pw"))
        self.assertEqual(self.successResultOf(d), "alice")
        self.assertEqual(self.results, [("alice", True)])

    def test_failure_is_delayed(self) -> None:
        """Wrong password or unknown user: UnauthorizedLogin, only after the delay."""
        for user in (b"alice", b"nobody", b"../etc"):
            d = self.checker.requestAvatarId(UsernamePassword(user, b"bad"))
            self.assertNoResult(d)
            self.clock.advance(2.0)
            self.failureResultOf(d, UnauthorizedLogin)

    def test_realm(self) -> None:
        """The realm hands out avatars of registered interfaces only."""

        class IThing(Interface):
            pass

        class IOther(Interface):
            pass

        realm = AppnetRealm()
        logouts = []
        realm.register(IThing, lambda user: (f"thing of {user}", lambda: logouts.append(user)))
        portal = make_portal(realm, self.checker)
        iface, avatar, logout = self.successResultOf(
            portal.login(UsernamePassword(b"alice", b"pw"), None, IThing)
        )
        self.assertEqual((iface, avatar), (IThing, "thing of alice"))
        logout()
        self.assertEqual(logouts, ["alice"])
        self.failureResultOf(
            portal.login(UsernamePassword(b"alice", b"pw"), None, IOther), UnhandledCredentials
        )


class AuthCacheTests(SynchronousTestCase):
    """The verified-credentials cache of AccountChecker."""

    def setUp(self) -> None:
        self.patch(accounts, "SCRYPT_N", 16)
        d = self.mktemp()
        os.makedirs(d)
        self.db = AccountDatabase(os.path.join(d, "users.json"))
        self.db.add("alice", "pw")
        self.clock = MemoryReactorClock()
        self.hashed: list[str] = []
        real = self.db.check_password

        def counting(name, password):
            self.hashed.append(name)
            return real(name, password)

        self.db.check_password = counting  # type: ignore[method-assign]
        self.checker = AccountChecker(
            self.db, failed_delay=1.0, reactor=self.clock,
            run_blocking=lambda f, *a: defer.maybeDeferred(f, *a), cache_ttl=300,
        )

    def login(self, password: bytes) -> defer.Deferred:
        return self.checker.requestAvatarId(UsernamePassword(b"alice", password))

    def test_second_login_skips_scrypt(self) -> None:
        """A repeated right password is answered from the cache, without hashing."""
        self.assertEqual(self.successResultOf(self.login(b"pw")), "alice")
        self.assertEqual(self.successResultOf(self.login(b"pw")), "alice")
        self.assertEqual(self.hashed, ["alice"])

    def test_wrong_password_never_cached(self) -> None:
        """A wrong password after a cached right one is still checked and refused."""
        self.successResultOf(self.login(b"pw"))
        d = self.login(b"wrong")
        self.clock.advance(1)
        self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(self.hashed, ["alice", "alice"])

    def test_expiry(self) -> None:
        """After the TTL the password is hashed again."""
        self.successResultOf(self.login(b"pw"))
        self.clock.advance(301)
        self.successResultOf(self.login(b"pw"))
        self.assertEqual(self.hashed, ["alice", "alice"])

    def test_password_change_voids(self) -> None:
        """After a password change the old password fails at once, cache or not."""
        self.successResultOf(self.login(b"pw"))
        self.db.set_password("alice", "new")
        d = self.login(b"pw")
        self.clock.advance(1)
        self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(self.successResultOf(self.login(b"new")), "alice")

    def test_deleted_user_voids(self) -> None:
        """A deleted user cannot log in with a cached password."""
        self.successResultOf(self.login(b"pw"))
        self.db.remove("alice")
        d = self.login(b"pw")
        self.clock.advance(1)
        self.failureResultOf(d, UnauthorizedLogin)

    def test_disabled(self) -> None:
        """cache_ttl=0 hashes every time."""
        self.checker.cache_ttl = 0
        self.successResultOf(self.login(b"pw"))
        self.successResultOf(self.login(b"pw"))
        self.assertEqual(self.hashed, ["alice", "alice"])


class PlaintextAuthPolicyTests(SynchronousTestCase):
    """L{plaintext_auth_allowed}: the C{plaintext_auth} rule POP3 and SMTP share."""

    def test_table(self) -> None:
        """Each policy against TLS, loopback, remote, IPv6 loopback and unknown peers."""
        cases = [
            ("always", False, "192.0.2.1", True),
            ("tls", False, "127.0.0.1", False),
            ("tls", True, "192.0.2.1", True),
            ("tls-or-loopback", False, "127.0.0.1", True),
            ("tls-or-loopback", False, "::1", True),
            ("tls-or-loopback", False, "192.0.2.1", False),
            ("tls-or-loopback", True, "192.0.2.1", True),
            ("tls-or-loopback", False, None, False),
            ("tls-or-loopback", False, "/run/appnet.sock", False),
        ]
        for policy, tls, peer, expected in cases:
            self.assertEqual(plaintext_auth_allowed(policy, tls, peer), expected, (policy, tls, peer))
