"""
Tests for L{appnet.filesystem.paths}: the one jail check.

A table of known traversal strings, a tree of hostile symlinks, and
hypothesis properties saying that any string either resolves inside the
root or is refused with L{PermissionDenied} (of which L{PathOutsideRoot} is
a kind), and nothing else.
"""

from __future__ import annotations

import errno
import os
import posixpath
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from appnet.errors import PathOutsideRoot, PermissionDenied
from appnet.filesystem.paths import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    is_valid_name,
    is_within,
    normalize_virtual,
    open_beneath,
    resolve_path,
    split_virtual,
    stat_beneath,
)

# Known traversal and smuggling strings, all of which must be refused.
ESCAPES = [
    "..",
    "/..",
    "../",
    "../etc/passwd",
    "/../../etc/passwd",
    "../../../../../../../../etc/passwd",
    "foo/../../bar",
    "a/b/../../../c",
    "./../x",
    ".../../..",
    "a/./../..",
    "..\\..\\windows\\win.ini",
    "\\etc\\passwd",
    "..\\",
    "a\\..\\..\\b",
    "\x00",
    "foo\x00.txt",
    "../\x00",
    "ok.txt\x00.jpg",
    "C:",
    "C:/Windows/win.ini",
    "/C:/Windows",
    "c:foo",
    "docs/D:/x",
    "\u2025/etc",  # TWO DOT LEADER: NFKC ".."
    "\uff0e\uff0e/etc",  # fullwidth full stops
    "\u2024\u2024",  # ONE DOT LEADER twice
    "\ufe30",  # PRESENTATION FORM FOR VERTICAL TWO DOT LEADER
    "a\uff0fb",  # FULLWIDTH SOLIDUS
    "a\uff3cb",  # FULLWIDTH REVERSE SOLIDUS
    "line\r\nbreak",
    "tab\there",
    "del\x7f",
    "nel\x85",  # C1 control
    "evil\u202etxt.exe",  # RIGHT-TO-LEFT OVERRIDE
    "\ud800",  # unpaired surrogate (undecodable byte)
    "x/\udcff",
]

# Odd strings that are harmless: they resolve, inside the root, to these.
INSIDE = [
    ("", ""),
    ("/", ""),
    (".", ""),
    ("./", ""),
    ("//", ""),
    ("/etc/passwd", "etc/passwd"),
    ("//etc//passwd", "etc/passwd"),
    ("///etc/./passwd/", "etc/passwd"),
    ("....//", "...."),
    ("....//....//etc", "..../..../etc"),
    ("a/../b", "b"),
    ("a/b/../../c", "c"),
    ("./a/./b/.", "a/b"),
    ("%2e%2e/%2e%2e/etc", "%2e%2e/%2e%2e/etc"),  # decoding is the caller's job
    ("..%2f..%2fetc", "..%2f..%2fetc"),
    ("~root/.ssh", "~root/.ssh"),
    ("file:/etc/passwd", "file:/etc/passwd"),
    ("10:30 notes", "10:30 notes"),
    ("e\u0301t\u00e9", "\u00e9t\u00e9"),  # NFD in, NFC out
    ("caf\u00e9/\u65e5\u672c", "caf\u00e9/\u65e5\u672c"),
    ("a\u00a0b", "a\u00a0b"),  # NBSP is an ordinary character
]


def _tree(case: SynchronousTestCase) -> tuple[str, str]:
    """
    Build a root full of hostile and friendly symlinks next to an outside
    directory; return (root, outside) as real paths.
    """
    base = os.path.realpath(case.mktemp())
    root = os.path.join(base, "root")
    outside = os.path.join(base, "outside")
    os.makedirs(os.path.join(root, "sub", "deep"))
    os.makedirs(outside)
    with open(os.path.join(outside, "secret"), "w") as f:
        f.write("secret")
    with open(os.path.join(root, "sub", "file"), "w") as f:
        f.write("inside")
    links = {
        "etc": "/etc",
        "up": "..",
        "outlink": outside,
        "outfile": os.path.join(outside, "secret"),
        "inner": "sub",
        "absinner": os.path.join(root, "sub"),
        "loop1": "loop2",
        "loop2": "loop1",
        "self": "self",
        "dangling_out": os.path.join(outside, "new"),
        "dangling_rel_out": "../outside/new2",
        "dangling_in": "sub/new",
        "sub/back": "../sub",
        "sub/escape": "../..",
        "sub/deep/up2": "../../..",
    }
    for name, target in links.items():
        os.symlink(target, os.path.join(root, name))
    return root, outside


class TraversalTableTests(SynchronousTestCase):
    """The table of known traversal strings."""

    def setUp(self) -> None:
        self.root, self.outside = _tree(self)

    def test_escapes_refused(self) -> None:
        """
        Every known traversal string raises L{PathOutsideRoot}, both from
        L{resolve_path} and from L{normalize_virtual}.
        """
        for text in ESCAPES:
            with self.subTest(text=text):
                self.assertRaises(PathOutsideRoot, resolve_path, self.root, text)
                self.assertRaises(PathOutsideRoot, normalize_virtual, text)

    def test_harmless_odd_strings_stay_inside(self) -> None:
        """
        Odd but harmless strings (absolute host paths, runs of dots,
        percent-escapes, C{a/../b}) resolve lexically to a path inside the
        root; decomposed Unicode comes out composed (NFC).
        """
        # A root without the hostile links: here /etc must be a plain name.
        root = os.path.realpath(self.mktemp())
        os.makedirs(root)
        for text, expected in INSIDE:
            with self.subTest(text=text):
                want = os.path.join(root, expected) if expected else root
                self.assertEqual(resolve_path(root, text), want)

    def test_long_names_denied(self) -> None:
        """
        A component over 255 UTF-8 bytes or a path over 4096 bytes raises
        L{PermissionDenied}; exactly at the limits is accepted.
        """
        ok_name = "a" * MAX_NAME_BYTES
        self.assertEqual(resolve_path(self.root, ok_name),
                         os.path.join(self.root, ok_name))
        self.assertRaises(PermissionDenied, resolve_path, self.root, "a" * 256)
        # 128 two-byte characters: 256 bytes although only 128 characters.
        self.assertRaises(PermissionDenied, resolve_path, self.root, "\u00e9" * 128)
        self.assertRaises(PermissionDenied, split_virtual, "a/" * 2049)
        self.assertEqual(len(split_virtual("a/" * 2048)), 2048)
        self.assertRaises(PermissionDenied, split_virtual, "x" * (MAX_PATH_BYTES + 1))
        self.assertRaises(PermissionDenied, split_virtual, "\u65e5/" * 1366)

    def test_non_str_is_a_type_error(self) -> None:
        """
        Bytes are a programming error (protocols decode first), not a path.
        """
        self.assertRaises(TypeError, resolve_path, self.root, b"../etc")
        self.assertRaises(TypeError, normalize_virtual, None)


class SymlinkTests(SynchronousTestCase):
    """Symlinks are followed only while they stay inside the root."""

    def setUp(self) -> None:
        self.root, self.outside = _tree(self)

    def test_links_leaving_the_root_refused(self) -> None:
        """
        A link to C{/etc}, to C{..}, to an outside directory or file, and a
        link deeper in the tree climbing out, are all refused, whether named
        themselves or as a directory on the way.
        """
        for text in ["etc", "etc/passwd", "up", "up/outside/secret", "outlink",
                     "outlink/secret", "outlink/new", "outfile", "sub/escape",
                     "sub/escape/outside/secret", "sub/deep/up2/x", "inner/escape",
                     "sub/back/escape"]:
            with self.subTest(text=text):
                self.assertRaises(PathOutsideRoot, resolve_path, self.root, text)

    def test_dangling_links_leaving_the_root_refused(self) -> None:
        """
        A dangling link whose target lies outside is refused, so that
        creating a file through it cannot create one outside.
        """
        for text in ["dangling_out", "dangling_rel_out"]:
            with self.subTest(text=text):
                self.assertRaises(PathOutsideRoot, resolve_path, self.root, text)
        self.assertFalse(os.path.lexists(os.path.join(self.outside, "new")))

    def test_loops_refused(self) -> None:
        """
        Symlink loops (two links naming each other, a link naming itself)
        raise L{PathOutsideRoot} rather than an C{OSError}.
        """
        for text in ["loop1", "loop2/x", "self", "self/self"]:
            with self.subTest(text=text):
                self.assertRaises(PathOutsideRoot, resolve_path, self.root, text)

    def test_links_inside_followed(self) -> None:
        """
        Links that stay inside resolve; the returned path keeps the link (so
        a rename or removal acts on the link) and its real path is inside.
        """
        for text, expected in [("inner/file", "inner/file"),
                               ("absinner/file", "absinner/file"),
                               ("sub/back/back/file", "sub/back/back/file"),
                               ("dangling_in", "dangling_in"),
                               ("inner/missing/deeper", "inner/missing/deeper")]:
            with self.subTest(text=text):
                got = resolve_path(self.root, text)
                self.assertEqual(got, os.path.join(self.root, expected))
                self.assertTrue(is_within(self.root, os.path.realpath(got)))

    def test_dotdot_is_lexical(self) -> None:
        """
        C{inner/..} is the root (lexically), not the parent of C{sub}'s
        target as the kernel would have it, and C{up/..} is the root too:
        C{..} never reaches a link's outside target.
        """
        self.assertEqual(resolve_path(self.root, "inner/.."), self.root)
        self.assertEqual(resolve_path(self.root, "up/../sub"),
                         os.path.join(self.root, "sub"))

    def test_root_given_through_a_symlink(self) -> None:
        """
        A root named through a symlink is jailed at its real path, and
        results are below the real path.
        """
        alias = os.path.join(os.path.dirname(self.root), "alias")
        os.symlink(self.root, alias)
        self.assertEqual(resolve_path(alias, "sub/file"),
                         os.path.join(self.root, "sub", "file"))
        self.assertRaises(PathOutsideRoot, resolve_path, alias, "up/outside")

    def test_path_through_a_file(self) -> None:
        """
        A path running through a regular file resolves (inside) and is left
        for the operation to report as not found.
        """
        self.assertEqual(resolve_path(self.root, "sub/file/x"),
                         os.path.join(self.root, "sub", "file", "x"))


def _careful(root: str, text: str) -> str:
    """
    The model of the jail check: C{realpath} of the result against
    C{realpath} of the root, for every path (what the resolver does when
    its walk meets a symlink).
    """
    parts = split_virtual(text)
    real_root = os.path.realpath(root)
    candidate = posixpath.join(real_root, *parts) if parts else real_root
    if len(os.fsencode(candidate)) > MAX_PATH_BYTES:
        raise PermissionDenied("path too long")
    try:
        real = os.path.realpath(candidate, strict=True)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PathOutsideRoot("loop") from None
        real = os.path.realpath(candidate)
    if parts and not is_within(real_root, real):
        raise PathOutsideRoot("outside")
    return candidate


class WalkTests(SynchronousTestCase):
    """
    The walk below the root (L{open_beneath}, L{stat_beneath} and the fast
    path of L{resolve_path}) follows no symlink, and nothing is cached that
    a change on disk could make stale.
    """

    def setUp(self) -> None:
        self.root, self.outside = _tree(self)

    def _read(self, parts: tuple[str, ...]) -> bytes | None:
        fd = open_beneath(self.root, parts, os.O_RDONLY)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def test_open_beneath_plain_paths(self) -> None:
        """
        A path without links opens; a missing file or directory on the way
        raises C{FileNotFoundError}; a directory opens as one.
        """
        self.assertEqual(self._read(("sub", "file")), b"inside")
        self.assertRaises(FileNotFoundError, open_beneath, self.root, ("sub", "nope"),
                          os.O_RDONLY)
        self.assertRaises(FileNotFoundError, open_beneath, self.root,
                          ("nodir", "file"), os.O_RDONLY)
        fd = open_beneath(self.root, ("sub", "deep"), os.O_RDONLY | os.O_DIRECTORY)
        self.assertIsNotNone(fd)
        os.close(fd)
        self.assertIsNone(open_beneath(self.root, ("inner",), os.O_RDONLY | os.O_DIRECTORY))
        self.assertRaises(NotADirectoryError, open_beneath, self.root, ("sub", "file"),
                          os.O_RDONLY | os.O_DIRECTORY)

    def test_open_beneath_never_follows_links(self) -> None:
        """
        Every symlink, inside or out, dangling or looping, as the last
        component or a directory on the way, gives C{None} (the careful way
        decides) and opens nothing outside.
        """
        for parts in [("etc", "passwd"), ("outfile",), ("outlink", "secret"),
                      ("up", "outside", "secret"), ("inner", "file"),
                      ("sub", "escape", "outside", "secret"), ("self",),
                      ("loop1", "x"), ("dangling_out",), ("sub", "back", "file")]:
            with self.subTest(parts=parts):
                self.assertIsNone(self._read(parts))

    def test_open_beneath_create_refuses_dangling_link(self) -> None:
        """
        Creating through a dangling link that points outside creates
        nothing outside.
        """
        fd = open_beneath(self.root, ("dangling_out",), os.O_WRONLY | os.O_CREAT)
        self.assertIsNone(fd)
        self.assertFalse(os.path.lexists(os.path.join(self.outside, "new")))

    def test_stat_beneath(self) -> None:
        """
        C{stat_beneath} stats plain paths (the root too), raises for
        missing ones and gives C{None} for any symlink.
        """
        self.assertEqual(stat_beneath(self.root, ("sub", "file")).st_size, 6)
        self.assertEqual(stat_beneath(self.root, ()).st_ino, os.stat(self.root).st_ino)
        self.assertRaises(FileNotFoundError, stat_beneath, self.root, ("sub", "x"))
        for parts in [("outfile",), ("inner",), ("inner", "file"), ("self",)]:
            with self.subTest(parts=parts):
                self.assertIsNone(stat_beneath(self.root, parts))

    def test_link_made_after_a_resolution_cannot_escape(self) -> None:
        """
        A directory resolved (and opened) once, then swapped for a symlink
        to the outside, is refused at the next resolution: nothing about
        the first walk is remembered.
        """
        os.makedirs(os.path.join(self.root, "swap"))
        with open(os.path.join(self.root, "swap", "secret"), "w") as f:
            f.write("mine")
        self.assertEqual(resolve_path(self.root, "swap/secret"),
                         os.path.join(self.root, "swap", "secret"))
        self.assertEqual(self._read(("swap", "secret")), b"mine")
        os.rename(os.path.join(self.root, "swap"), os.path.join(self.root, "old"))
        os.symlink(self.outside, os.path.join(self.root, "swap"))
        self.assertRaises(PathOutsideRoot, resolve_path, self.root, "swap/secret")
        self.assertIsNone(self._read(("swap", "secret")))
        self.assertIsNone(stat_beneath(self.root, ("swap", "secret")))

    def test_root_replaced(self) -> None:
        """
        A root named through a link that is then pointed elsewhere is
        jailed at its new real path at once; a root that is removed and
        made again is the new directory.
        """
        base = os.path.realpath(self.mktemp())
        first, second = os.path.join(base, "first"), os.path.join(base, "second")
        os.makedirs(first)
        os.makedirs(second)
        alias = os.path.join(base, "alias")
        os.symlink(first, alias)
        self.assertEqual(resolve_path(alias, "x"), os.path.join(first, "x"))
        os.remove(alias)
        os.symlink(second, alias)
        self.assertEqual(resolve_path(alias, "x"), os.path.join(second, "x"))
        with open(os.path.join(first, "f"), "w") as f:
            f.write("first")
        os.rename(first, os.path.join(base, "gone"))
        os.makedirs(first)
        self.assertRaises(FileNotFoundError, open_beneath, first, ("f",), os.O_RDONLY)
        self.assertEqual(resolve_path(first, "f"), os.path.join(first, "f"))

    def test_removed_root(self) -> None:
        """
        A root that no longer exists resolves (lexically, as before) to
        paths that name nothing, and opens nothing.
        """
        gone = os.path.join(os.path.realpath(self.mktemp()), "gone")
        self.assertEqual(resolve_path(gone, "a/b"), os.path.join(gone, "a", "b"))
        self.assertIsNone(open_beneath(gone, ("a",), os.O_RDONLY))


class HelperTests(SynchronousTestCase):
    """normalize_virtual, is_valid_name and is_within."""

    def test_normalize_joins_cwd(self) -> None:
        """
        Relative paths join the current directory, absolute ones ignore it,
        and the result is canonical (FTP's PWD).
        """
        self.assertEqual(normalize_virtual("b", "/a"), "/a/b")
        self.assertEqual(normalize_virtual("../c", "/a/b"), "/a/c")
        self.assertEqual(normalize_virtual("/x", "/a"), "/x")
        self.assertEqual(normalize_virtual("..", "/a"), "/")
        self.assertEqual(normalize_virtual("", "/a/"), "/a")
        self.assertRaises(PathOutsideRoot, normalize_virtual, "../..", "/a")

    def test_is_valid_name(self) -> None:
        """
        Names a listing may show are exactly the names a client can send
        back as one component.
        """
        for name in ["a", "....", "caf\u00e9", "a b", ".hidden", "10:30"]:
            self.assertTrue(is_valid_name(name), name)
        for name in ["", ".", "..", "a/b", "a\\b", "a\nb", "C:x", "e\u0301",
                     "x" * 256, "\u2025", "\udcff"]:
            self.assertFalse(is_valid_name(name), name)

    def test_is_within(self) -> None:
        """
        C{is_within} compares whole components: C{/a/bc} is not within
        C{/a/b}; everything is within C{/}.
        """
        self.assertTrue(is_within("/a/b", "/a/b"))
        self.assertTrue(is_within("/a/b", "/a/b/c"))
        self.assertFalse(is_within("/a/b", "/a/bc"))
        self.assertFalse(is_within("/a/b", "/a"))
        self.assertTrue(is_within("/", "/etc"))


# Components a fuzzer should combine: traversal, separators, smuggling and
# the names of the hostile links in _tree().
_NASTY = ["..", ".", "", "...", "....", "\\", "..\\", "\x00", "C:", "\u2025",
          "\uff0e\uff0e", "%2e%2e", "a", "sub", "file", "deep", "etc", "up",
          "outlink", "outfile", "inner", "absinner", "loop1", "self", "escape",
          "back", "up2", "dangling_out", "dangling_rel_out", "dangling_in",
          "outside", "secret", "e\u0301"]

# Any character at all, with separators and dots made common enough that
# random strings often look like paths.
_any_text = st.text(
    st.one_of(st.characters(codec=None, exclude_categories=()),
              st.sampled_from(["/", ".", "\\"])),
    max_size=80,
)
_nasty_path = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["", "/", "//", "./", "../"]),
    st.lists(st.sampled_from(_NASTY), max_size=12),
)


class PropertyTests(SynchronousTestCase):
    """Hypothesis properties of the jail check."""

    def setUp(self) -> None:
        self.root, self.outside = _tree(self)

    def _check(self, text: str) -> None:
        try:
            got = resolve_path(self.root, text)
        except PermissionDenied:
            return
        self.assertTrue(is_within(self.root, got), (text, got))
        self.assertTrue(is_within(self.root, os.path.realpath(got)), (text, got))

    @settings(max_examples=400, deadline=None)
    @given(_any_text)
    def test_any_text_inside_or_refused(self, text: str) -> None:
        """
        Any string whatever (surrogates and controls included) either
        resolves to a path whose lexical and real paths lie inside the root,
        or raises L{PermissionDenied}; no other exception escapes.
        """
        self._check(text)

    @settings(max_examples=600, deadline=None)
    @given(_nasty_path)
    def test_nasty_paths_inside_or_refused(self, text: str) -> None:
        """
        Paths built from traversal components and the hostile symlinks of
        the test tree never resolve outside the root, lexically or really.
        """
        self._check(text)

    @settings(max_examples=400, deadline=None)
    @given(_nasty_path)
    def test_walk_agrees_with_the_careful_check(self, text: str) -> None:
        """
        Whether or not its walk meets a symlink, L{resolve_path} gives the
        same result as the careful C{realpath} model, or the same refusal.
        """
        try:
            expected: object = _careful(self.root, text)
        except PermissionDenied as e:
            expected = type(e)
        try:
            got: object = resolve_path(self.root, text)
        except PermissionDenied as e:
            got = type(e)
        self.assertEqual(got, expected, text)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(["a", "b", ".", "..", ""]), max_size=15))
    def test_dotdot_model(self, parts: list[str]) -> None:
        """
        C{..} behaves exactly like a stack pop, and is refused exactly when
        it would pop the root: checked against a model.
        """
        stack: list[str] = []
        escaped = False
        for part in parts:
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    escaped = True
                    break
                stack.pop()
            else:
                stack.append(part)
        text = "/".join(parts)
        if escaped:
            self.assertRaises(PathOutsideRoot, split_virtual, text)
        else:
            self.assertEqual(split_virtual(text), tuple(stack))

    @settings(max_examples=300, deadline=None)
    @given(_any_text, st.sampled_from(["/", "/a", "/a/b"]))
    def test_normalize_is_idempotent(self, text: str, cwd: str) -> None:
        """
        A normalised path normalises to itself, is absolute, is NFC, and
        resolves to the same host path as the original.
        """
        try:
            canonical = normalize_virtual(text, cwd)
        except PermissionDenied:
            return
        self.assertEqual(normalize_virtual(canonical, "/elsewhere"), canonical)
        self.assertTrue(canonical.startswith("/"))
        self.assertTrue(unicodedata.is_normalized("NFC", canonical))
        absolute = text if text.startswith("/") else posixpath.join(cwd, text)
        self.assertEqual(resolve_path(self.root, canonical),
                         resolve_path(self.root, absolute))

    @settings(max_examples=300, deadline=None)
    @given(_any_text)
    def test_valid_names_round_trip(self, name: str) -> None:
        """
        A name that L{is_valid_name} accepts is one component naming itself
        (what a listing shows is what a client can send back).
        """
        if is_valid_name(name):
            self.assertEqual(split_virtual(name), (name,))
            self.assertEqual(normalize_virtual(name), "/" + name)
