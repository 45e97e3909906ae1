"""
Tests for the filesystem store (L{appnet.filesystem}): the permission
matrix, traversal through the views, quota, tree operations, REST-style
offsets, listings, and streaming through producers and consumers.

The behaviour tests are a mixin (L{FileStoreTestsMixin}) so that any other
L{IFileStore} implementation can be run against the same suite.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
from collections.abc import Callable

from twisted.internet import task
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from appnet.errors import (
    NotFound,
    PathOutsideRoot,
    PermissionDenied,
    QuotaExceeded,
    StoreError,
)
from appnet.filesystem import (
    AlreadyExists,
    DirectoryNotEmpty,
    FileProducer,
    FileStore,
    IFileStore,
    IFileView,
    IFileWriter,
    InvalidOffset,
    IsADirectory,
    NotADirectory,
    stream_file,
)
from appnet.filesystem.store import RESERVED_PREFIX

from .test_paths import ESCAPES


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _snapshot(base: str) -> dict[str, object]:
    """Everything under C{base}: path -> contents, C{"dir"} or link target."""
    result: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                result[path] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                result[path] = "dir"
            else:
                result[path] = _read(path)
    return result


_TICK = 0.001


def _step(clock: task.Clock) -> None:
    """Run one step of a L{_cooperator}."""
    clock.advance(_TICK)


def _pump(clock: task.Clock, limit: int = 10_000) -> None:
    """Run the test cooperator until it has nothing left to do."""
    for _ in range(limit):
        if not clock.getDelayedCalls():
            return
        clock.advance(_TICK)
    raise AssertionError("cooperator still busy")


def _cooperator(clock: task.Clock) -> task.Cooperator:
    """
    A cooperator doing one unit of work per step, driven by C{clock}: each
    step is scheduled one tick later, so that C{clock.advance(_TICK)} runs
    exactly one.
    """
    return task.Cooperator(
        terminationPredicateFactory=lambda: (lambda: True),
        scheduler=lambda f: clock.callLater(_TICK, f),
    )


@implementer(IPushProducer)
class FakeProducer:
    """A data connection stand-in that records being stopped."""

    stopped = False

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


@implementer(IConsumer)
class ListConsumer:
    """A consumer recording each write, and its producer."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.producer = None
        self.streaming = None

    def registerProducer(self, producer, streaming) -> None:
        self.producer, self.streaming = producer, streaming

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


class _Raising(dict):
    """A quota table whose lookups call C{f} (which raises)."""

    def __init__(self, f: Callable[[str], int]) -> None:
        super().__init__()
        self._f = f

    def get(self, user, default=None):
        return self._f(user)


class FileStoreTestsMixin:
    """
    Behaviour every L{IFileStore} must have. Subclasses provide
    L{make_store}, L{host} (the host path of a store path, to check the
    disk) and, to seed content, L{seed}.
    """

    quotas: dict[str, int | None]

    def make_store(self, incoming: bool = True,
                   incoming_limit: int | None = None) -> FileStore:
        raise NotImplementedError()

    def host(self, path: str) -> str:
        raise NotImplementedError()

    def seed(self) -> None:
        """
        Content shared by the tests::
            public/readme.txt, public/pub/sub/deep.txt,
            public/incoming/secret.bin (an earlier anonymous upload),
            home/alice/notes.txt, home/bob/private.txt
        """
        _write(self.host("public/readme.txt"), b"read me")
        _write(self.host("public/pub/sub/deep.txt"), b"deep")
        _write(self.host("public/incoming/secret.bin"), b"warez")
        _write(self.host("home/alice/notes.txt"), b"alice's notes")
        _write(self.host("home/bob/private.txt"), b"bob's secret")

    def setUp(self) -> None:
        self.quotas = {}
        self.store = self.make_store()
        self.seed()
        self.anon = self.store.view_for(None)
        self.alice = self.store.view_for("alice")
        self.bob = self.store.view_for("bob")

    def upload(self, view, path: str, data: bytes, **kw) -> int:
        writer = view.open_write(path, **kw)
        writer.write(data)
        return self.successResultOf(writer.close())

    def download(self, view, path: str, offset: int = 0) -> bytes:
        with view.open_read(path, offset) as f:
            return f.read()

    # interfaces

    def test_interfaces(self) -> None:
        """
        The store, its views (anonymous and user) and its writers provide
        their interfaces completely.
        """
        self.assertTrue(verifyObject(IFileStore, self.store))
        self.assertTrue(verifyObject(IFileView, self.anon))
        self.assertTrue(verifyObject(IFileView, self.alice))
        writer = self.alice.open_write("/x")
        self.assertTrue(verifyObject(IFileWriter, writer))
        self.assertTrue(verifyObject(IConsumer, writer))
        writer.abort()

    # permission matrix

    def _matrix(self) -> list[tuple[str, str, str, Callable[[], object],
                                    type[Exception] | None]]:
        """
        (actor, operation, area, action, expected error or None).
        """
        a, al, b = self.anon, self.alice, self.bob
        up = self.upload
        return [
            # anonymous x public
            ("anon", "list", "public", lambda: a.list("/"), None),
            ("anon", "read", "public", lambda: self.download(a, "/readme.txt"), None),
            ("anon", "stat", "public", lambda: a.stat("/pub/sub/deep.txt"), None),
            ("anon", "write", "public", lambda: up(a, "/new.txt", b"x"), PermissionDenied),
            ("anon", "overwrite", "public", lambda: up(a, "/readme.txt", b"x"),
             PermissionDenied),
            ("anon", "append", "public", lambda: up(a, "/readme.txt", b"x", append=True),
             PermissionDenied),
            ("anon", "mkdir", "public", lambda: a.mkdir("/d"), PermissionDenied),
            ("anon", "delete", "public", lambda: a.remove("/readme.txt"), PermissionDenied),
            ("anon", "rmdir", "public", lambda: a.rmdir("/pub/sub"), PermissionDenied),
            ("anon", "rename", "public", lambda: a.rename("/readme.txt", "/r.txt"),
             PermissionDenied),
            # anonymous x incoming
            ("anon", "list", "incoming", lambda: a.list("/incoming"), PermissionDenied),
            ("anon", "read", "incoming", lambda: a.open_read("/incoming/secret.bin"),
             PermissionDenied),
            ("anon", "stat", "incoming", lambda: a.stat("/incoming/secret.bin"),
             PermissionDenied),
            ("anon", "exists", "incoming", lambda: a.exists("/incoming/secret.bin"),
             PermissionDenied),
            ("anon", "write", "incoming", lambda: up(a, "/incoming/new.bin", b"x"), None),
            ("anon", "overwrite", "incoming",
             lambda: up(a, "/incoming/secret.bin", b"x"), AlreadyExists),
            ("anon", "append", "incoming",
             lambda: up(a, "/incoming/secret.bin", b"x", append=True), PermissionDenied),
            ("anon", "resume", "incoming",
             lambda: up(a, "/incoming/secret.bin", b"x", offset=1), PermissionDenied),
            ("anon", "mkdir", "incoming", lambda: a.mkdir("/incoming/d"), PermissionDenied),
            ("anon", "write-subdir", "incoming",
             lambda: up(a, "/incoming/d/x", b"x"), PermissionDenied),
            ("anon", "delete", "incoming", lambda: a.remove("/incoming/secret.bin"),
             PermissionDenied),
            ("anon", "rename", "incoming",
             lambda: a.rename("/incoming/secret.bin", "/incoming/s"), PermissionDenied),
            ("anon", "rmdir", "incoming", lambda: a.rmdir("/incoming"), PermissionDenied),
            # anonymous x home
            ("anon", "read", "home", lambda: a.open_read("/../home/alice/notes.txt"),
             PathOutsideRoot),
            ("anon", "read", "home", lambda: a.open_read("/home/alice/notes.txt"),
             NotFound),
            ("anon", "list", "home", lambda: a.list("/../home"), PathOutsideRoot),
            ("anon", "write", "home",
             lambda: up(a, "/../home/alice/evil", b"x"), PathOutsideRoot),
            ("anon", "delete", "home",
             lambda: a.remove("/../home/alice/notes.txt"), PathOutsideRoot),
            # user x own home
            ("alice", "list", "home", lambda: al.list("/"), None),
            ("alice", "read", "home", lambda: self.download(al, "/notes.txt"), None),
            ("alice", "write", "home", lambda: up(al, "/new.txt", b"x"), None),
            ("alice", "overwrite", "home", lambda: up(al, "/notes.txt", b"x"), None),
            ("alice", "append", "home", lambda: up(al, "/notes.txt", b"x", append=True),
             None),
            ("alice", "mkdir", "home", lambda: al.mkdir("/d"), None),
            ("alice", "rename", "home", lambda: al.rename("/new.txt", "/n.txt"), None),
            ("alice", "delete", "home", lambda: al.remove("/n.txt"), None),
            # user x public
            ("alice", "list", "public", lambda: al.list("/public/pub"), None),
            ("alice", "read", "public",
             lambda: self.download(al, "/public/readme.txt"), None),
            ("alice", "write", "public", lambda: up(al, "/public/new", b"x"),
             PermissionDenied),
            ("alice", "overwrite", "public", lambda: up(al, "/public/readme.txt", b"x"),
             PermissionDenied),
            ("alice", "mkdir", "public", lambda: al.mkdir("/public/d"), PermissionDenied),
            ("alice", "delete", "public", lambda: al.remove("/public/readme.txt"),
             PermissionDenied),
            ("alice", "rmdir", "public", lambda: al.rmdir("/public/pub/sub"),
             PermissionDenied),
            ("alice", "rename-out", "public",
             lambda: al.rename("/public/readme.txt", "/mine.txt"), PermissionDenied),
            ("alice", "rename-in", "public",
             lambda: al.rename("/notes.txt", "/public/notes.txt"), PermissionDenied),
            ("alice", "delete-mount", "public", lambda: al.rmdir("/public"),
             PermissionDenied),
            # user x incoming
            ("alice", "list", "incoming", lambda: al.list("/public/incoming"),
             PermissionDenied),
            ("alice", "read", "incoming",
             lambda: al.open_read("/public/incoming/secret.bin"), PermissionDenied),
            ("alice", "write", "incoming",
             lambda: up(al, "/public/incoming/from-alice", b"x"), None),
            ("alice", "delete", "incoming",
             lambda: al.remove("/public/incoming/secret.bin"), PermissionDenied),
            # user x other user's home
            ("alice", "read", "other", lambda: al.open_read("/../bob/private.txt"),
             PathOutsideRoot),
            ("alice", "read", "other", lambda: al.open_read("/home/bob/private.txt"),
             NotFound),
            ("alice", "list", "other", lambda: al.list("/../bob"), PathOutsideRoot),
            ("alice", "write", "other", lambda: up(al, "/../bob/evil", b"x"),
             PathOutsideRoot),
            ("alice", "delete", "other", lambda: al.remove("/../bob/private.txt"),
             PathOutsideRoot),
            ("alice", "rename", "other",
             lambda: al.rename("/notes.txt", "/../bob/notes.txt"), PathOutsideRoot),
            ("bob", "read", "other", lambda: b.open_read("/../alice/notes.txt"),
             PathOutsideRoot),
            ("bob", "list", "other", lambda: b.list("/../../home/alice"),
             PathOutsideRoot),
        ]

    def test_permission_matrix(self) -> None:
        """
        Anonymous, a user and another user reading, writing, listing and
        deleting in public/, incoming/ and the homes get exactly the outcome
        of the table; every refused operation leaves the whole store
        unchanged.
        """
        for actor, op, area, action, expected in self._matrix():
            with self.subTest(actor=actor, op=op, area=area):
                before = _snapshot(self.store.root)
                if expected is None:
                    action()
                else:
                    self.assertRaises(expected, action)
                    self.assertEqual(_snapshot(self.store.root), before)

    def test_dropbox_upload_lands_in_incoming(self) -> None:
        """
        Anonymous uploads to C{/incoming} land in C{public/incoming/}; a user
        uploads to the same drop box as C{/public/incoming}.
        """
        self.upload(self.anon, "/incoming/a.bin", b"anon")
        self.upload(self.alice, "/public/incoming/b.bin", b"alice")
        self.assertEqual(_read(self.host("public/incoming/a.bin")), b"anon")
        self.assertEqual(_read(self.host("public/incoming/b.bin")), b"alice")

    def test_dropbox_hidden_from_public_through_symlink(self) -> None:
        """
        A symlink in public/ that points into the drop box is neither
        listed nor readable: the drop box cannot be read by the back door.
        """
        os.symlink("incoming", self.host("public/peek"))
        os.symlink("../incoming/secret.bin", self.host("public/pub/grab"))
        names = [i.name for i in self.anon.list("/")]
        self.assertNotIn("peek", names)
        self.assertNotIn("grab", [i.name for i in self.anon.list("/pub")])
        self.assertRaises(PermissionDenied, self.anon.open_read, "/peek/secret.bin")
        self.assertRaises(PermissionDenied, self.anon.list, "/peek")
        self.assertRaises(PermissionDenied, self.anon.open_read, "/pub/grab")
        self.assertRaises(PermissionDenied, self.alice.open_read, "/public/pub/grab")

    def test_reads_follow_inside_links_only(self) -> None:
        """
        Reads and stats take the walk for plain paths and the careful check
        for links: a link inside the home reads its target, a link leaving
        it is refused, and a directory swapped for a link to another home
        after it was read is refused at the next read, stat and listing.
        """
        os.symlink("notes.txt", self.host("home/alice/alias"))
        os.symlink("../bob", self.host("home/alice/peek"))
        _write(self.host("home/alice/dir/f.txt"), b"mine")
        self.assertEqual(self.download(self.alice, "/alias"), b"alice's notes")
        self.assertEqual(self.alice.stat("/alias").size, len(b"alice's notes"))
        self.assertRaises(PathOutsideRoot, self.alice.open_read, "/peek/private.txt")
        self.assertRaises(PathOutsideRoot, self.alice.stat, "/peek/private.txt")
        self.assertEqual(self.download(self.alice, "/dir/f.txt"), b"mine")
        self.assertEqual(self.alice.stat("/dir/f.txt").size, 4)
        os.rename(self.host("home/alice/dir"), self.host("home/alice/was"))
        os.symlink(self.host("home/bob"), self.host("home/alice/dir"))
        _write(self.host("home/bob/f.txt"), b"bob's")
        self.assertRaises(PathOutsideRoot, self.alice.open_read, "/dir/f.txt")
        self.assertRaises(PathOutsideRoot, self.alice.stat, "/dir/f.txt")
        self.assertRaises(PathOutsideRoot, self.alice.list, "/dir")

    def test_home_replaced_while_viewed(self) -> None:
        """
        A view keeps naming its home by path: when the administrator moves
        the home away and makes a new one, the view sees the new one.
        """
        self.assertEqual(self.download(self.alice, "/notes.txt"), b"alice's notes")
        os.rename(self.host("home/alice"), self.host("home/alice.old"))
        _write(self.host("home/alice/notes.txt"), b"fresh")
        self.assertEqual(self.download(self.alice, "/notes.txt"), b"fresh")
        self.assertEqual(self.alice.stat("/notes.txt").size, 5)

    def test_without_dropbox(self) -> None:
        """
        With the drop box disabled, anonymous cannot write anywhere and an
        existing C{public/incoming/} is ordinary read-only content.
        """
        store = self.make_store(incoming=False)
        anon = store.view_for(None)
        self.assertRaises(PermissionDenied, anon.open_write, "/incoming/new")
        self.assertEqual(self.download(anon, "/incoming/secret.bin"), b"warez")
        self.assertEqual(anon.stat("/incoming").perm, "el")

    def test_invalid_user_names(self) -> None:
        """
        User names that cannot be a single directory are refused, so an
        avatar name can never pick another home or escape C{home/}.
        """
        for user in ["", ".", "..", "a/b", "../alice", ".hidden", "x\x00", "a\\b",
                     "C:"]:
            with self.subTest(user=user):
                self.assertRaises(PermissionDenied, self.store.view_for, user)

    # traversal through the views

    def test_traversal_table_through_every_operation(self) -> None:
        """
        Every known traversal string is refused with L{PermissionDenied} by
        every view operation, and the store is left unchanged.
        """
        before = _snapshot(self.store.root)
        for view in (self.anon, self.alice):
            for text in ESCAPES:
                for name, action in [
                    ("list", lambda: view.list(text)),
                    ("stat", lambda: view.stat(text)),
                    ("exists", lambda: view.exists(text)),
                    ("read", lambda: view.open_read(text)),
                    ("write", lambda: view.open_write(text)),
                    ("append", lambda: view.open_write(text, append=True)),
                    ("unique", lambda: view.open_unique("/", text)),
                    ("mkdir", lambda: view.mkdir(text)),
                    ("rmdir", lambda: view.rmdir(text)),
                    ("remove", lambda: view.remove(text)),
                    ("rename-from", lambda: view.rename(text, "/x")),
                    ("rename-to", lambda: view.rename("/notes.txt", text)),
                ]:
                    with self.subTest(user=view.user, text=text, op=name):
                        self.assertRaises(PermissionDenied, action)
        self.assertEqual(_snapshot(self.store.root), before)

    def test_reserved_names_unreachable(self) -> None:
        """
        appnet's temporary-file names cannot be read, written, created or
        renamed to, even while an upload's temporary file exists.
        """
        writer = self.alice.open_write("/big.bin")
        temp = [n for n in os.listdir(self.host("home/alice"))
                if n.startswith(RESERVED_PREFIX)]
        self.assertEqual(len(temp), 1)
        for action in [lambda: self.alice.open_read("/" + temp[0]),
                       lambda: self.alice.stat("/" + temp[0]),
                       lambda: self.alice.remove("/" + temp[0]),
                       lambda: self.alice.mkdir("/.appnet-x"),
                       lambda: self.alice.rename("/notes.txt", "/.appnet-part-1")]:
            self.assertRaises(PermissionDenied, action)
        self.assertNotIn(temp[0], [i.name for i in self.alice.list("/")])
        writer.abort()

    # listings and stat

    def test_list_facts(self) -> None:
        """
        Listings give name, virtual path, kind, size, mtime and the RFC 3659
        perm fact for the avatar, sorted by name; the user's root shows the
        C{public} mount, anonymous's root shows the drop box.
        """
        self.alice.mkdir("/docs")
        infos = {i.name: i for i in self.alice.list("/")}
        self.assertEqual(sorted(infos), ["docs", "notes.txt", "public"])
        notes = infos["notes.txt"]
        st = os.stat(self.host("home/alice/notes.txt"))
        self.assertEqual((notes.path, notes.kind, notes.size, notes.mtime, notes.perm),
                         ("/notes.txt", "file", 13, st.st_mtime, "adfrw"))
        self.assertEqual((infos["docs"].kind, infos["docs"].perm), ("dir", "cdeflmp"))
        self.assertTrue(infos["docs"].is_dir)
        self.assertEqual((infos["public"].path, infos["public"].perm), ("/public", "el"))
        anon = {i.name: i for i in self.anon.list("/")}
        self.assertEqual(sorted(anon), ["incoming", "pub", "readme.txt"])
        self.assertEqual(anon["incoming"].perm, "ce")
        self.assertEqual(anon["readme.txt"].perm, "r")
        self.assertEqual(anon["pub"].perm, "el")
        public = {i.name: i for i in self.alice.list("/public")}
        self.assertEqual(public["incoming"].path, "/public/incoming")

    def test_list_many_entries(self) -> None:
        """
        A directory of 3,000 files lists completely and in order (the
        listing is one C{os.scandir} pass).
        """
        directory = self.host("home/alice/many")
        os.makedirs(directory)
        for n in range(3000):
            open(os.path.join(directory, f"f{n:05d}"), "wb").close()
        names = [i.name for i in self.alice.list("/many")]
        self.assertEqual(names, [f"f{n:05d}" for n in range(3000)])

    def test_list_hides_unaddressable_entries(self) -> None:
        """
        Symlinks leading outside the area, dangling links, loops, FIFOs,
        names no client could send back (newline, backslash, NFD, invalid
        UTF-8) and temporary files are left out of listings.
        """
        home = self.host("home/alice")
        os.symlink("/etc", os.path.join(home, "etc"))
        os.symlink("../bob", os.path.join(home, "bob"))
        os.symlink("nowhere", os.path.join(home, "dangling"))
        os.symlink("loop", os.path.join(home, "loop"))
        os.symlink("notes.txt", os.path.join(home, "alias"))
        os.mkfifo(os.path.join(home, "fifo"))
        for name in ["new\nline", "back\\slash", "e\u0301"]:
            open(os.path.join(home, name), "wb").close()
        open(os.path.join(os.fsencode(home), b"bad\xff"), "wb").close()
        open(os.path.join(home, ".appnet-part-0123"), "wb").close()
        names = [i.name for i in self.alice.list("/")]
        self.assertEqual(names, ["alias", "notes.txt", "public"])
        self.assertRaises(NotFound, self.alice.open_read, "/fifo")
        self.assertRaises(NotFound, self.alice.stat, "/fifo")
        self.assertRaises(PathOutsideRoot, self.alice.open_read, "/bob/private.txt")
        self.assertRaises(PathOutsideRoot, self.alice.open_read, "/etc/passwd")
        self.assertRaises(PathOutsideRoot, self.alice.stat, "/loop")
        self.assertEqual(self.download(self.alice, "/alias"), b"alice's notes")

    def test_home_entry_named_public_shadowed(self) -> None:
        """
        A real C{public} entry in a home is shadowed by the public mount:
        listed once, as the mount.
        """
        os.makedirs(self.host("home/alice/public"))
        infos = [i for i in self.alice.list("/") if i.name == "public"]
        self.assertEqual(len(infos), 1)
        self.assertEqual(infos[0].perm, "el")
        self.assertEqual(self.download(self.alice, "/public/readme.txt"), b"read me")

    def test_list_errors(self) -> None:
        """
        Listing a file raises L{NotADirectory}; a missing directory
        L{NotFound}.
        """
        self.assertRaises(NotADirectory, self.alice.list, "/notes.txt")
        self.assertRaises(NotFound, self.alice.list, "/missing")

    def test_stat_and_exists(self) -> None:
        """
        C{stat} reports roots and mounts with their area's perms (SIZE and
        MDTM come from it); C{exists} is False for missing paths and for a
        path through a file.
        """
        root = self.alice.stat("/")
        self.assertEqual((root.name, root.path, root.kind, root.perm),
                         ("", "/", "dir", "celmp"))
        self.assertEqual(self.anon.stat("/").perm, "el")
        self.assertEqual(self.anon.stat("/incoming").perm, "ce")
        self.assertEqual(self.alice.stat("/public/incoming").perm, "ce")
        info = self.anon.stat("/pub/sub/deep.txt")
        self.assertEqual((info.name, info.size), ("deep.txt", 4))
        self.assertEqual(info.mtime,
                         os.stat(self.host("public/pub/sub/deep.txt")).st_mtime)
        self.assertTrue(self.alice.exists("/notes.txt"))
        self.assertFalse(self.alice.exists("/nope"))
        self.assertFalse(self.alice.exists("/notes.txt/x"))
        self.assertRaises(NotFound, self.alice.stat, "/nope")

    # tree operations

    def test_mkdir_rmdir(self) -> None:
        """
        mkdir creates, refuses an existing name or missing parent; rmdir
        removes an empty directory and refuses non-empty ones, files,
        missing paths and the root.
        """
        self.alice.mkdir("/a")
        self.alice.mkdir("/a/b")
        self.assertTrue(os.path.isdir(self.host("home/alice/a/b")))
        self.assertRaises(AlreadyExists, self.alice.mkdir, "/a")
        self.assertRaises(AlreadyExists, self.alice.mkdir, "/notes.txt")
        self.assertRaises(AlreadyExists, self.alice.mkdir, "/")
        self.assertRaises(NotFound, self.alice.mkdir, "/x/y")
        self.assertRaises(DirectoryNotEmpty, self.alice.rmdir, "/a")
        self.assertRaises(NotADirectory, self.alice.rmdir, "/notes.txt")
        self.assertRaises(NotFound, self.alice.rmdir, "/nope")
        self.assertRaises(PermissionDenied, self.alice.rmdir, "/")
        self.alice.rmdir("/a/b")
        self.alice.rmdir("/a")
        self.assertFalse(os.path.exists(self.host("home/alice/a")))

    def test_remove(self) -> None:
        """
        remove deletes a file, or a symlink but not its target, and refuses
        directories and missing files.
        """
        os.symlink("notes.txt", self.host("home/alice/alias"))
        self.alice.remove("/alias")
        self.assertTrue(os.path.exists(self.host("home/alice/notes.txt")))
        self.alice.mkdir("/d")
        self.assertRaises(IsADirectory, self.alice.remove, "/d")
        self.assertRaises(PermissionDenied, self.alice.remove, "/")
        self.alice.remove("/notes.txt")
        self.assertRaises(NotFound, self.alice.remove, "/notes.txt")

    def test_rename(self) -> None:
        """
        rename moves files and directories (with their contents), replaces
        an existing file, and refuses: a missing source, a file onto a
        directory, a directory into itself, a non-empty target directory,
        a missing target parent.
        """
        self.alice.mkdir("/d")
        self.upload(self.alice, "/d/f", b"in d")
        self.alice.rename("/d", "/e")
        self.assertEqual(self.download(self.alice, "/e/f"), b"in d")
        self.upload(self.alice, "/other", b"other")
        self.alice.rename("/other", "/notes.txt")
        self.assertEqual(self.download(self.alice, "/notes.txt"), b"other")
        self.assertFalse(self.alice.exists("/other"))
        self.alice.rename("/notes.txt", "/notes.txt")
        self.assertRaises(NotFound, self.alice.rename, "/nope", "/x")
        self.assertRaises(IsADirectory, self.alice.rename, "/notes.txt", "/e")
        self.assertRaises(NotADirectory, self.alice.rename, "/e", "/notes.txt")
        self.assertRaises(PermissionDenied, self.alice.rename, "/e", "/e/sub")
        self.alice.mkdir("/g")
        self.upload(self.alice, "/g/h", b"")
        self.assertRaises(DirectoryNotEmpty, self.alice.rename, "/e", "/g")
        self.assertRaises(NotFound, self.alice.rename, "/notes.txt", "/x/y")
        self.assertRaises(PermissionDenied, self.alice.rename, "/", "/root")
        self.assertRaises(PermissionDenied, self.alice.rename, "/public", "/p")

    # reading and writing with offsets

    def test_open_read_offsets(self) -> None:
        """
        open_read starts at the REST offset; an offset at the end reads
        nothing; beyond it raises L{InvalidOffset}; negative is a
        C{ValueError}; directories raise L{IsADirectory}.
        """
        self.assertEqual(self.download(self.alice, "/notes.txt", 8), b"notes")
        self.assertEqual(self.download(self.alice, "/notes.txt", 13), b"")
        self.assertRaises(InvalidOffset, self.alice.open_read, "/notes.txt", 14)
        self.assertRaises(ValueError, self.alice.open_read, "/notes.txt", -1)
        self.assertRaises(IsADirectory, self.alice.open_read, "/")
        self.assertRaises(IsADirectory, self.alice.open_read, "/public")
        self.assertRaises(NotFound, self.alice.open_read, "/nope")
        with self.alice.open_read("/notes.txt", 5) as f:
            self.assertEqual(os.fstat(f.fileno()).st_size, 13)
            self.assertEqual(f.tell(), 5)

    def test_write_at_offset(self) -> None:
        """
        A REST offset write overwrites in place from the offset without
        truncating; at the end it extends; beyond the end or on a missing
        file it is refused.
        """
        self.upload(self.alice, "/f", b"0123456789")
        self.upload(self.alice, "/f", b"ab", offset=4)
        self.assertEqual(self.download(self.alice, "/f"), b"0123ab6789")
        self.upload(self.alice, "/f", b"XYZ", offset=10)
        self.assertEqual(self.download(self.alice, "/f"), b"0123ab6789XYZ")
        self.assertRaises(InvalidOffset, self.alice.open_write, "/f", offset=14)
        self.assertRaises(NotFound, self.alice.open_write, "/missing", offset=1)
        self.assertRaises(ValueError, self.alice.open_write, "/f", offset=-1)
        self.assertRaises(ValueError, self.alice.open_write, "/f", offset=1, append=True)
        self.assertRaises(ValueError, self.alice.open_write, "/f", append=True,
                          exclusive=True)

    def test_append(self) -> None:
        """
        APPE writes at the end of an existing file and creates a missing one.
        """
        self.upload(self.alice, "/notes.txt", b"!", append=True)
        self.assertEqual(self.download(self.alice, "/notes.txt"), b"alice's notes!")
        self.upload(self.alice, "/fresh", b"new", append=True)
        self.assertEqual(self.download(self.alice, "/fresh"), b"new")

    def test_replace_is_atomic(self) -> None:
        """
        While a replacing upload is in progress readers see the old file;
        on close the new content appears at once.
        """
        writer = self.alice.open_write("/notes.txt")
        writer.write(b"new content")
        self.assertEqual(self.download(self.alice, "/notes.txt"), b"alice's notes")
        self.assertEqual(self.successResultOf(writer.close()), 11)
        self.assertEqual(self.download(self.alice, "/notes.txt"), b"new content")
        self.assertEqual(self._temporaries("home/alice"), [])

    def _temporaries(self, directory: str) -> list[str]:
        return [n for n in os.listdir(self.host(directory))
                if n.startswith(RESERVED_PREFIX)]

    def test_abort(self) -> None:
        """
        abort() leaves the file as it was (old content kept, temporary file
        or created file removed, in-place write truncated back); with
        C{keep_partial} what arrived is kept. close() after abort fails.
        """
        writer = self.alice.open_write("/notes.txt")
        writer.write(b"partial")
        writer.abort()
        self.assertEqual(self.download(self.alice, "/notes.txt"), b"alice's notes")
        self.assertEqual(self._temporaries("home/alice"), [])
        self.failureResultOf(writer.close(), StoreError)
        writer = self.alice.open_write("/notes.txt", append=True)
        writer.write(b" more")
        writer.abort()
        self.assertEqual(self.download(self.alice, "/notes.txt"), b"alice's notes")
        writer = self.alice.open_write("/created", exclusive=True)
        writer.write(b"x")
        writer.abort()
        self.assertFalse(self.alice.exists("/created"))
        writer = self.alice.open_write("/kept")
        writer.write(b"half")
        writer.abort(keep_partial=True)
        self.assertEqual(self.download(self.alice, "/kept"), b"half")
        self.assertEqual(self.successResultOf(writer.close()), 4)

    def test_exclusive_and_unique(self) -> None:
        """
        An exclusive write refuses an existing file; open_unique (STOU)
        picks the hint, then C{hint.1}, C{hint.2}, or C{upload} without a
        hint, and refuses a hint that is not one name.
        """
        self.assertRaises(AlreadyExists, self.alice.open_write, "/notes.txt",
                          exclusive=True)
        paths = []
        for _ in range(3):
            writer = self.alice.open_unique("/", "report.pdf")
            paths.append(writer.path)
            self.successResultOf(writer.close())
        self.assertEqual(paths, ["/report.pdf", "/report.pdf.1", "/report.pdf.2"])
        writer = self.alice.open_unique()
        self.assertEqual(writer.path, "/upload")
        writer.abort()
        self.assertRaises(PathOutsideRoot, self.alice.open_unique, "/", "../x")
        self.assertRaises(PathOutsideRoot, self.alice.open_unique, "/", "a/b")
        writer = self.anon.open_unique("/incoming", "secret.bin")
        self.assertEqual(writer.path, "/incoming/secret.bin.1")
        writer.write(b"data")
        self.successResultOf(writer.close())
        self.assertRaises(PermissionDenied, self.anon.open_unique, "/", "x")

    def test_write_to_directories_refused(self) -> None:
        """
        Writing to a directory, an area root or a symlink to a directory
        raises L{IsADirectory}; into a missing directory L{NotFound}.
        """
        self.alice.mkdir("/d")
        os.symlink("d", self.host("home/alice/dlink"))
        for path in ["/d", "/", "/dlink"]:
            self.assertRaises(IsADirectory, self.alice.open_write, path)
        self.assertRaises(IsADirectory, self.alice.open_write, "/d", append=True)
        self.assertRaises(NotFound, self.alice.open_write, "/nodir/f")

    def test_writer_misuse(self) -> None:
        """
        Writing after close is a C{RuntimeError}; close is idempotent; a
        pull producer or a second producer is refused.
        """
        writer = self.alice.open_write("/f")
        self.assertRaises(ValueError, writer.registerProducer, FakeProducer(), False)
        writer.registerProducer(FakeProducer(), True)
        self.assertRaises(RuntimeError, writer.registerProducer, FakeProducer(), True)
        writer.unregisterProducer()
        writer.write(b"abc")
        self.assertEqual(self.successResultOf(writer.close()), 3)
        self.assertEqual(self.successResultOf(writer.close()), 3)
        self.assertRaises(RuntimeError, writer.write, b"more")

    # quota

    def test_quota_counts_existing_and_new_files(self) -> None:
        """
        Usage starts as the size of the files already in the home and
        follows uploads, removals and replacing renames.
        """
        self.quotas["alice"] = 1000
        self.assertEqual(self.store.quota("alice"), (13, 1000))
        self.upload(self.alice, "/a", b"x" * 100)
        self.assertEqual(self.store.quota("alice"), (113, 1000))
        self.upload(self.alice, "/a", b"x" * 40)
        self.assertEqual(self.store.quota("alice"), (53, 1000))
        self.upload(self.alice, "/a", b"y" * 10, append=True)
        self.assertEqual(self.store.quota("alice"), (63, 1000))
        self.alice.rename("/a", "/notes.txt")
        self.assertEqual(self.store.quota("alice"), (50, 1000))
        self.alice.remove("/notes.txt")
        self.assertEqual(self.store.quota("alice"), (0, 1000))
        self.assertEqual(self.store.quota("bob"), (12, None))

    def test_quota_exact_limit_allowed(self) -> None:
        """A write that brings usage exactly to the quota succeeds."""
        self.quotas["alice"] = 100
        self.upload(self.alice, "/a", b"x" * 87)
        self.assertEqual(self.store.quota("alice"), (100, 100))

    def test_quota_exceeded_mid_stream(self) -> None:
        """
        A replacing upload that crosses the quota on its third chunk fails:
        error set, producer (the data connection) stopped, later chunks
        dropped, temporary file removed, the old file intact, usage as
        before; close() fails with L{QuotaExceeded}.
        """
        self.quotas["alice"] = 100
        producer = FakeProducer()
        writer = self.alice.open_write("/notes.txt")
        writer.registerProducer(producer, True)
        writer.write(b"x" * 40)
        writer.write(b"x" * 40)
        self.assertIsNone(writer.error)
        self.assertFalse(producer.stopped)
        writer.write(b"x" * 40)
        self.assertIsInstance(writer.error, QuotaExceeded)
        self.assertTrue(producer.stopped)
        writer.write(b"ignored")
        self.assertEqual(writer.bytes_written, 80)
        self.failureResultOf(writer.close(), QuotaExceeded)
        self.assertEqual(self.download(self.alice, "/notes.txt"), b"alice's notes")
        self.assertEqual(self._temporaries("home/alice"), [])
        self.assertEqual(self.store.quota("alice"), (13, 100))

    def test_quota_exceeded_new_file_leaves_nothing(self) -> None:
        """
        New files (replacing, exclusive, APPE-created) that exceed the quota
        leave no file and no usage behind.
        """
        self.quotas["alice"] = 50
        for kw in [{}, {"exclusive": True}, {"append": True}]:
            with self.subTest(**kw):
                writer = self.alice.open_write("/big", **kw)
                writer.write(b"x" * 30)
                writer.write(b"x" * 30)
                self.failureResultOf(writer.close(), QuotaExceeded)
                self.assertFalse(os.path.lexists(self.host("home/alice/big")))
                self.assertEqual(self._temporaries("home/alice"), [])
                self.assertEqual(self.store.quota("alice"), (13, 50))

    def test_quota_exceeded_in_place(self) -> None:
        """
        An APPE or REST write that exceeds the quota is truncated back to
        the file's former size, and usage is as before.
        """
        self.quotas["alice"] = 20
        writer = self.alice.open_write("/notes.txt", append=True)
        writer.write(b"12345")
        writer.write(b"67890")
        self.failureResultOf(writer.close(), QuotaExceeded)
        self.assertEqual(self.download(self.alice, "/notes.txt"), b"alice's notes")
        writer = self.alice.open_write("/notes.txt", offset=10)
        writer.write(b"ABCDEFGHIJK")
        self.failureResultOf(writer.close(), QuotaExceeded)
        self.assertEqual(os.path.getsize(self.host("home/alice/notes.txt")), 13)
        self.assertEqual(self.store.quota("alice"), (13, 20))

    def test_quota_replacing_needs_room_for_net_growth_only(self) -> None:
        """
        Replacing a file is charged its final size minus the replaced size,
        so a nearly full account can still rewrite a file.
        """
        self.quotas["alice"] = 20
        self.upload(self.alice, "/notes.txt", b"y" * 20)
        self.assertEqual(self.store.quota("alice"), (20, 20))

    def test_quota_shared_by_concurrent_uploads(self) -> None:
        """
        Two uploads in progress reserve their bytes together: the one that
        would take the sum over the quota fails, the other completes.
        """
        self.quotas["alice"] = 100
        first = self.alice.open_write("/a")
        second = self.alice.open_write("/b")
        first.write(b"x" * 50)
        second.write(b"x" * 30)
        second.write(b"x" * 30)
        self.assertIsInstance(second.error, QuotaExceeded)
        first.write(b"x" * 30)
        self.assertEqual(self.successResultOf(first.close()), 80)
        self.assertEqual(self.store.quota("alice"), (93, 100))

    def test_quota_is_per_user(self) -> None:
        """One user's quota does not limit another's uploads."""
        self.quotas["alice"] = 10
        self.upload(self.bob, "/big", b"x" * 1000)
        self.assertEqual(self.store.quota("bob")[0], 1012)

    def test_quota_change_applies_to_next_upload(self) -> None:
        """The quota callable is consulted when each upload starts."""
        self.quotas["alice"] = 10
        writer = self.alice.open_write("/a")
        writer.write(b"x" * 20)
        self.assertIsInstance(writer.error, QuotaExceeded)
        self.quotas["alice"] = None
        self.upload(self.alice, "/a", b"x" * 20)

    def test_quota_lookup_failure_leaves_nothing(self) -> None:
        """
        If asking for the quota fails, open_write raises and leaves no
        temporary file behind.
        """
        def broken(user: str) -> int:
            raise RuntimeError("accounts database down")

        self.quotas = _Raising(broken)
        self.assertRaises(RuntimeError, self.alice.open_write, "/x")
        self.assertEqual(self._temporaries("home/alice"), [])

    def test_incoming_limit(self) -> None:
        """
        The drop box has its own limit over everything it holds, shared by
        anonymous and users; a failing upload leaves nothing.
        """
        store = self.make_store(incoming_limit=10)
        anon = store.view_for(None)
        # It holds "warez" (5 bytes) already: 6 more is one too many.
        writer = anon.open_write("/incoming/a")
        writer.write(b"123456")
        self.failureResultOf(writer.close(), QuotaExceeded)
        self.assertFalse(os.path.exists(self.host("public/incoming/a")))
        self.upload(anon, "/incoming/b", b"12345")
        writer = store.view_for("alice").open_write("/public/incoming/c")
        writer.write(b"x")
        self.failureResultOf(writer.close(), QuotaExceeded)
        self.assertFalse(os.path.exists(self.host("public/incoming/c")))

    # streaming

    def test_stream_file_to_transport(self) -> None:
        """
        L{stream_file} writes a file to a transport in chunks of at most
        C{chunk_size}, one read per cooperator step, registered as a
        streaming producer; it unregisters, closes the file and fires with
        the byte count at the end.
        """
        data = os.urandom(300_000)
        _write(self.host("public/big.bin"), data)
        clock = task.Clock()
        transport = StringTransport()
        f = self.anon.open_read("/big.bin")
        d = stream_file(f, transport, chunk_size=65536, cooperator=_cooperator(clock))
        self.assertTrue(transport.streaming)
        self.assertEqual(transport.value(), b"")
        _step(clock)
        self.assertEqual(len(transport.value()), 65536)
        _pump(clock)
        self.assertEqual(self.successResultOf(d), len(data))
        self.assertEqual(transport.value(), data)
        self.assertIsNone(transport.producer)
        self.assertTrue(f.closed)

    def test_producer_pause_resume(self) -> None:
        """
        While the consumer has paused the producer no chunk is read; after
        resume the rest arrives.
        """
        _write(self.host("public/big.bin"), b"x" * 1000)
        clock = task.Clock()
        consumer = ListConsumer()
        producer = FileProducer(self.anon.open_read("/big.bin"), chunk_size=100)
        self.assertTrue(verifyObject(IPushProducer, producer))
        d = producer.start(consumer, _cooperator(clock))
        self.assertIs(consumer.producer, producer)
        self.assertTrue(consumer.streaming)
        _step(clock)
        producer.pauseProducing()
        for _ in range(5):
            _step(clock)
        self.assertEqual(len(consumer.chunks), 1)
        producer.resumeProducing()
        _pump(clock)
        self.assertEqual(self.successResultOf(d), 1000)
        self.assertEqual([len(c) for c in consumer.chunks], [100] * 10)

    def test_producer_stop_and_cancel(self) -> None:
        """
        stopProducing (the connection went away) fails the Deferred with
        L{CancelledError} and closes the file; cancelling the Deferred stops
        the producer.
        """
        _write(self.host("public/big.bin"), b"x" * 1000)
        clock = task.Clock()
        consumer = ListConsumer()
        f = self.anon.open_read("/big.bin")
        producer = FileProducer(f, chunk_size=100)
        d = producer.start(consumer, _cooperator(clock))
        _step(clock)
        producer.stopProducing()
        producer.stopProducing()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(f.closed)
        _pump(clock)
        self.assertEqual(len(consumer.chunks), 1)
        f = self.anon.open_read("/big.bin")
        d = stream_file(f, ListConsumer(), cooperator=_cooperator(clock))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        _pump(clock)
        self.assertTrue(f.closed)

    def test_producer_range(self) -> None:
        """
        An offset from open_read plus C{length} streams exactly that range
        (HTTP Range, FTP REST).
        """
        _write(self.host("public/digits"), b"0123456789")
        clock = task.Clock()
        transport = StringTransport()
        d = stream_file(self.anon.open_read("/digits", 3), transport, length=4,
                        chunk_size=3, cooperator=_cooperator(clock))
        _pump(clock)
        self.assertEqual(self.successResultOf(d), 4)
        self.assertEqual(transport.value(), b"3456")

    def test_producer_read_error(self) -> None:
        """A failing read fails the Deferred with L{StoreError}."""

        class Broken(io.BytesIO):
            def read(self, size=-1):
                raise OSError(errno.EIO, "I/O error")

        clock = task.Clock()
        d = stream_file(Broken(), ListConsumer(), cooperator=_cooperator(clock))
        _pump(clock)
        self.failureResultOf(d, StoreError)

    def test_copy_between_views_through_producer_and_writer(self) -> None:
        """
        A FileProducer feeding a FileWriter copies a file chunk by chunk:
        the producer registers with the writer, unregisters at the end, and
        the writer commits the copy intact.
        """
        data = os.urandom(500_000)
        _write(self.host("public/big.bin"), data)
        clock = task.Clock()
        writer = self.alice.open_write("/copy.bin")
        d = stream_file(self.alice.open_read("/public/big.bin"), writer,
                        cooperator=_cooperator(clock))
        _pump(clock)
        self.assertEqual(self.successResultOf(d), len(data))
        self.assertEqual(self.successResultOf(writer.close()), len(data))
        self.assertEqual(hashlib.sha256(_read(self.host("home/alice/copy.bin"))).digest(),
                         hashlib.sha256(data).digest())

    def test_quota_stops_streaming_producer(self) -> None:
        """
        When a streamed upload crosses the quota the writer stops its
        producer (its Deferred fails with L{CancelledError}), and nothing of
        the upload remains.
        """
        self.quotas["alice"] = 200_000
        _write(self.host("public/big.bin"), b"x" * 500_000)
        clock = task.Clock()
        writer = self.alice.open_write("/copy.bin")
        d = stream_file(self.alice.open_read("/public/big.bin"), writer,
                        chunk_size=65536, cooperator=_cooperator(clock))
        _pump(clock)
        self.failureResultOf(d, CancelledError)
        self.failureResultOf(writer.close(), QuotaExceeded)
        self.assertFalse(self.alice.exists("/copy.bin"))
        self.assertEqual(self._temporaries("home/alice"), [])
        self.assertEqual(self.store.quota("alice"), (13, 200_000))

    def test_writer_stops_transport(self) -> None:
        """
        A data connection's transport registered with a writer is stopped
        when the quota is crossed (the FTP server then answers 552).
        """
        self.quotas["alice"] = 10
        transport = StringTransport()
        writer = self.alice.open_write("/x")
        writer.registerProducer(transport, True)
        writer.write(b"x" * 11)
        self.assertEqual(transport.producerState, "stopped")


class FileStoreTests(FileStoreTestsMixin, SynchronousTestCase):
    """L{FileStore} on a temporary directory."""

    def make_store(self, incoming: bool = True,
                   incoming_limit: int | None = None) -> FileStore:
        if not hasattr(self, "_base"):
            self._base = os.path.realpath(self.mktemp())
        return FileStore(self._base, quota_for=lambda user: self.quotas.get(user),
                         incoming=incoming, incoming_limit=incoming_limit)

    def host(self, path: str) -> str:
        return os.path.join(self._base, path)

    def test_layout_created(self) -> None:
        """
        A new store creates C{public/}, C{home/} and, with a drop box,
        C{public/incoming/}; a user's home appears on first view.
        """
        base = os.path.realpath(self.mktemp())
        store = FileStore(base, incoming=True)
        self.assertEqual(store.root, base)
        for d in ["public", "home", "public/incoming"]:
            self.assertTrue(os.path.isdir(os.path.join(base, d)), d)
        self.assertFalse(os.path.exists(os.path.join(base, "home", "carol")))
        store.view_for("carol")
        self.assertTrue(os.path.isdir(os.path.join(base, "home", "carol")))

    def test_home_symlinked_elsewhere(self) -> None:
        """
        An administrator may point C{home/<user>} elsewhere with a symlink;
        the user is jailed in its target.
        """
        elsewhere = os.path.realpath(self.mktemp())
        _write(os.path.join(elsewhere, "big", "f"), b"on the big disk")
        os.symlink(os.path.join(elsewhere, "big"), self.host("home/dave"))
        dave = self.store.view_for("dave")
        self.assertEqual(self.download(dave, "/f"), b"on the big disk")
        self.assertRaises(PathOutsideRoot, dave.open_read, "/../f")

    def test_no_reactor_import(self) -> None:
        """
        Importing the package does not import the global reactor (the
        plugin file and tests choose their own).
        """
        import subprocess
        import sys

        code = ("import sys, appnet.filesystem; "
                "sys.exit('twisted.internet.reactor' in sys.modules)")
        result = subprocess.run([sys.executable, "-c", code],
                                cwd=os.path.dirname(os.path.dirname(
                                    os.path.dirname(os.path.abspath(__file__)))))
        self.assertEqual(result.returncode, 0)
