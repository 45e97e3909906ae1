"""
One account database for every protocol.

Accounts live in C{<data_dir>/users.json} (mode 0600), one entry per user
with a slow salted scrypt hash and an optional quota. The file is rewritten
atomically (tmp, fsync, rename), and a running server notices changes by the
file's modification stamp, so C{appnet user add} takes effect without a
restart.

Protocols authenticate through twisted.cred: L{AccountChecker} checks
L{IUsernamePassword} credentials (hashing in a thread, so the reactor never
stalls on scrypt; delaying every failure, so guessing is slow and nobody can
tell an unknown user from a wrong password), and L{AppnetRealm} hands each
protocol the avatar it asked for, built by a factory the protocol registered.
The realm knows no protocol: a protocol package calls
L{AppnetRealm.register} with its own interface and avatar factory.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any, Callable

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from zope.interface import Interface, implementer

from appnet.errors import NoSuchUser, UserExists

__all__ = [
    "PLAINTEXT_AUTH_POLICIES",
    "plaintext_auth_allowed",
    "AccountDatabase",
    "AccountChecker",
    "AppnetRealm",
    "Account",
    "hash_password",
    "verify_password",
    "valid_username",
    "make_portal",
]

_log = Logger()

#: scrypt cost: N=2**15, r=8, p=1 uses 32 MiB and ~60 ms here, the
#: interactive-login setting the scrypt paper recommends.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024

_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")


#: Where a protocol accepts a password sent in the clear (USER/PASS, AUTH
#: PLAIN/LOGIN): the C{plaintext_auth} setting of POP3 and SMTP.
PLAINTEXT_AUTH_POLICIES = ("tls-or-loopback", "tls", "always")


def plaintext_auth_allowed(policy: str, tls: bool, peer_host: str | None) -> bool:
    """
    May a client send its password in the clear on this connection?

    @param policy: one of L{PLAINTEXT_AUTH_POLICIES}: C{"always"};
        C{"tls"} (only once the connection is encrypted); C{"tls-or-loopback"}
        (encrypted, or from a loopback address, where nobody can listen in)
    @param tls: whether the connection is encrypted
    @param peer_host: the client's address, None when unknown
    """
    if policy == "always" or tls:
        return True
    if policy == "tls" or peer_host is None:
        return False
    try:
        return ipaddress.ip_address(peer_host).is_loopback
    except ValueError:
        return False


def valid_username(name: str) -> bool:
    """
    True for names usable across every protocol and as a directory name:
    lowercase letters, digits, C{.}, C{_}, C{-}; not starting with C{.} or
    C{-}; at most 64 characters.
    """
    return bool(_USERNAME.match(name)) and ".." not in name


def hash_password(password: str, *, n: int | None = None, r: int | None = None, p: int | None = None) -> str:
    """
    Hash a password with scrypt and a fresh 16-byte salt, at the module's
    C{SCRYPT_N}, C{SCRYPT_R}, C{SCRYPT_P} cost unless given.

    @return: C{scrypt$N$r$p$salt$hash} with base64 salt and hash
    """
    n, r, p = n or SCRYPT_N, r or SCRYPT_R, p or SCRYPT_P
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32
    )
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${n}${r}${p}${b64(salt)}${b64(digest)}"


def verify_password(password: str | bytes, encoded: str) -> bool:
    """
    Check a password against a L{hash_password} string in constant time.
    A malformed hash never matches.
    """
    if isinstance(password, str):
        password = password.encode("utf-8")
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password,
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_SCRYPT_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# Checked against when the user does not exist, so an unknown name costs the
# same time as a wrong password.
_DUMMY_HASH = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(secrets.token_hex(8))
    return _DUMMY_HASH


@dataclass(frozen=True)
class Account:
    """
    One user.

    @ivar name: the login name
    @ivar password_hash: a L{hash_password} string
    @ivar quota: byte limit for mail and files, or L{None} for the default
    """

    name: str
    password_hash: str
    quota: int | None = None


class AccountDatabase:
    """
    The user database file, re-read whenever it changes on disk.

    @param path: the JSON file (created on the first write, mode 0600)
    @param default_quota: byte quota of accounts that set none
    """

    def __init__(self, path: str, default_quota: int | None = None) -> None:
        self.path = path
        self.default_quota = default_quota
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._accounts: dict[str, Account] = {}
        self._current: tuple[tuple[int, int, int] | None, dict[str, Account]] = (None, {})

    def _load(self) -> dict[str, Account]:
        """Return the accounts, re-reading the file if it changed."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._accounts = None, {}
            self._current = (None, self._accounts)
            return self._accounts
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        current = self._current
        if current[0] == stamp:
            return current[1]  # unchanged: no lock (SMTP asks per recipient)
        with self._lock:
            if stamp != self._stamp:
                with open(self.path, "rb") as f:
                    raw = json.load(f)
                self._accounts = {
                    name: Account(name, entry["password"], entry.get("quota"))
                    for name, entry in raw.get("users", {}).items()
                }
                self._stamp = stamp
                # One tuple, replaced whole: a reader without the lock sees
                # a stamp with the accounts read for it.
                self._current = (stamp, self._accounts)
            return self._accounts

    def _save(self, accounts: dict[str, Account]) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        raw = {
            "users": {
                a.name: {"password": a.password_hash, **({"quota": a.quota} if a.quota else {})}
                for a in sorted(accounts.values(), key=lambda a: a.name)
            }
        }
        tmp = f"{self.path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(raw, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        os.chmod(self.path, 0o600)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def get(self, name: str) -> Account | None:
        """The account, or L{None}."""
        return self._load().get(name)

    def exists(self, name: str) -> bool:
        """True if the user exists."""
        return name in self._load()

    def names(self) -> list[str]:
        """All user names, sorted."""
        return sorted(self._load())

    def quota(self, name: str) -> int | None:
        """The user's byte quota (their own, else the default), or None."""
        account = self._load().get(name)
        if account is not None and account.quota:
            return account.quota
        return self.default_quota

    def add(self, name: str, password: str, quota: int | None = None) -> Account:
        """
        Create a user.

        @raise ValueError: bad name or empty password
        @raise UserExists: the name is taken
        """
        if not valid_username(name):
            raise ValueError(
                f"bad user name {name!r}: use a-z 0-9 . _ -, up to 64, starting with a letter or digit"
            )
        if not password:
            raise ValueError("empty password")
        accounts = dict(self._load())
        if name in accounts:
            raise UserExists(name)
        accounts[name] = Account(name, hash_password(password), quota)
        self._save(accounts)
        return accounts[name]

    def set_password(self, name: str, password: str) -> None:
        """@raise NoSuchUser: unknown user"""
        if not password:
            raise ValueError("empty password")
        accounts = dict(self._load())
        if name not in accounts:
            raise NoSuchUser(name)
        accounts[name] = Account(name, hash_password(password), accounts[name].quota)
        self._save(accounts)

    def remove(self, name: str) -> None:
        """@raise NoSuchUser: unknown user"""
        accounts = dict(self._load())
        if name not in accounts:
            raise NoSuchUser(name)
        del accounts[name]
        self._save(accounts)

    def check_password(self, name: str, password: str | bytes) -> bool:
        """
        True if the password is right. Blocking (scrypt): call from a thread.
        An unknown user costs as long as a wrong password.
        """
        account = self._load().get(name)
        if account is None:
            verify_password(password, _dummy_hash())
            return False
        return verify_password(password, account.password_hash)


@implementer(ICredentialsChecker)
class AccountChecker:
    """
    twisted.cred checker for L{IUsernamePassword} against an
    L{AccountDatabase}.

    Every failure is delayed by C{failed_delay} seconds and reported as the
    same L{UnauthorizedLogin}, whatever the reason.

    @param on_result: called with C{(username, ok)} after each attempt (stats)
    @param cache_ttl: seconds a verified password is remembered (as a keyed
        HMAC, voided by any change to the account), so repeated logins skip
        scrypt; 0 disables the cache
    @param run_blocking: runs the scrypt check; default C{deferToThread}
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        accounts: AccountDatabase,
        failed_delay: float = 1.0,
        reactor: Any = None,
        run_blocking: Callable[..., defer.Deferred] | None = None,
        on_result: Callable[[str, bool], None] | None = None,
        cache_ttl: float = 0,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.accounts = accounts
        self.failed_delay = failed_delay
        self.reactor = reactor
        self.run_blocking = run_blocking or (
            lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a)
        )
        self.on_result = on_result
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[bytes, float, str]] = {}
        self._cache_key = secrets.token_bytes(32)

    def requestAvatarId(self, credentials: IUsernamePassword) -> defer.Deferred:
        """Fire with the user name, or fail with L{UnauthorizedLogin}."""
        username = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        password = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        name = username.lower() if valid_username(username.lower()) else None

        if name is not None and self._cached(name, password):
            if self.on_result is not None:
                self.on_result(username, True)
            return defer.succeed(name)

        def checked(ok: bool) -> Any:
            if self.on_result is not None:
                self.on_result(username, ok)
            if ok:
                self._remember(name, password)
                return name
            return task.deferLater(self.reactor, self.failed_delay, _refuse)

        def check() -> bool:
            if name is None:
                verify_password(password, _dummy_hash())
                return False
            return self.accounts.check_password(name, password)

        return self.run_blocking(check).addCallback(checked)

    # A verified-credentials cache, as Dovecot's auth_cache: mail clients log
    # in every few minutes, often on several connections at once, and each
    # scrypt costs ~100 ms of CPU. An entry holds only a keyed HMAC of the
    # password (the key never leaves this process) and the account's hash
    # at the time, so a password change or deletion voids it at once.

    def _digest(self, name: str, password: bytes) -> bytes:
        return hmac.new(self._cache_key, name.encode() + b"\0" + password, hashlib.sha256).digest()

    def _cached(self, name: str, password: bytes) -> bool:
        entry = self._cache.get(name)
        if entry is None:
            return False
        digest, expires, password_hash = entry
        account = self.accounts.get(name)
        if (
            account is None
            or account.password_hash != password_hash
            or self.reactor.seconds() >= expires
        ):
            del self._cache[name]
            return False
        return hmac.compare_digest(digest, self._digest(name, password))

    def _remember(self, name: str | None, password: bytes) -> None:
        if not self.cache_ttl or name is None:
            return
        account = self.accounts.get(name)
        if account is None:
            return
        if len(self._cache) >= 10_000:
            self._cache.clear()
        self._cache[name] = (
            self._digest(name, password),
            self.reactor.seconds() + self.cache_ttl,
            account.password_hash,
        )


def _refuse() -> None:
    raise UnauthorizedLogin("authentication failed")


@implementer(IRealm)
class AppnetRealm:
    """
    Hands each protocol the avatar it asks for.

    Protocols register C{interface -> factory(username) -> (avatar, logout)};
    the realm itself imports no protocol.
    """

    def __init__(self) -> None:
        self._factories: dict[type[Interface], Callable[[str], tuple[Any, Callable[[], None]]]] = {}

    def register(
        self,
        interface: type[Interface],
        factory: Callable[[str], tuple[Any, Callable[[], None]]],
    ) -> None:
        """Serve avatars for C{interface} with C{factory(username)}."""
        self._factories[interface] = factory

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        """Return C{(interface, avatar, logout)} for the first known interface."""
        for interface in interfaces:
            factory = self._factories.get(interface)
            if factory is not None:
                avatar, logout = factory(avatarId)
                return interface, avatar, logout
        raise UnhandledCredentials(f"no avatar for {interfaces!r}")


def make_portal(realm: AppnetRealm, checker: AccountChecker) -> Portal:
    """A twisted.cred Portal over appnet's realm and checker."""
    return Portal(realm, [checker])
