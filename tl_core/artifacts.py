"""A mirror of run and dataset folders at an artifacts location, so they outlive the local disk.

``$TL_ARTIFACTS_URL`` is a folder or any fsspec URL (``file:///srv/tl``, ``s3://bucket/prefix``
with s3fs, ``gs://bucket/prefix`` with gcsfs, ...). The local folder stays the working copy: a
folder is uploaded when it is complete (a finished run, a saved dataset) and downloaded when it
is missing locally (a fresh server on a wiped disk).

Each mirrored folder holds a manifest, written last, listing its files with their sizes and
modification times: a folder without one is absent (an upload that never completed), a fetch
takes exactly the files it lists, and a second upload sends only the files that changed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from tl_core.errors import ConfigError
from tl_core.fsutil import new_folder

ARTIFACTS_ENV = "TL_ARTIFACTS_URL"
MISSING_RECHECK_SECONDS = 30.0
MANIFEST = ".tl-manifest.json"
log = logging.getLogger(__name__)


def _unsafe_names(names, folder: Path) -> list[str]:
    """The manifest names that could land outside ``folder``: absolute, with ``..``, ``\\`` or NUL, or
    resolving outside it (the manifest comes from the bucket, which someone else may have written to)."""
    root = folder.resolve()

    def unsafe(name: object) -> bool:
        if not isinstance(name, str) or "\\" in name or "\0" in name or name.startswith("/"):
            return True
        if any(part in ("", ".", "..") for part in name.split("/")):
            return True
        return not (root / name).resolve().is_relative_to(root)

    return [name for name in names if unsafe(name)]


def _local_files(folder: Path) -> dict[str, list[int]]:
    """``{relative posix path: [size, mtime_ns]}`` of the folder's files, hidden and temporary ones left out."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            stat = path.stat()
            files[relative.as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return files


class ArtifactMirror:
    """Folders mirrored under one fsspec location, each by a key such as ``runs/<run id>``.

    Args:
        url: a folder path or an fsspec URL.

    Raises:
        ConfigError: the URL's file system is unknown or needs a package that is not installed.
    """

    def __init__(self, url: str) -> None:
        import fsspec

        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as err:
            raise ConfigError(
                f"The artifacts location '{url}' (from {ARTIFACTS_ENV} or artifacts_url) cannot be used: {err}. "
                "Give a folder path or an fsspec URL (s3:// needs s3fs, gs:// needs gcsfs installed)."
            ) from err
        self.url, self.root = url, root.rstrip("/")
        self._missing: dict[str, float] = {}  # key -> when it was last found absent
        self._listed: dict[str, tuple[float, list[str]]] = {}  # prefix -> (when, names)
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.location = f"{protocol}://{self.root}"

    def __repr__(self) -> str:
        return f"ArtifactMirror({self.location!r})"

    def _remote(self, key: str, relative: str = "") -> str:
        return "/".join(part for part in (self.root, key, relative) if part)

    def _manifest(self, key: str) -> dict[str, list[int]] | None:
        try:
            return json.loads(self.fs.cat_file(self._remote(key, MANIFEST)))["files"]
        except FileNotFoundError:
            return None

    def upload(self, folder: Path, key: str) -> int:
        """Make the mirror of ``key`` the same as ``folder``: changed files sent, vanished ones removed.

        Returns:
            How many files were sent.
        """
        before = self._manifest(key) or {}
        for name in _unsafe_names(before, folder):  # a tampered manifest removes nothing outside the key
            del before[name]
        files = _local_files(folder)
        changed = [name for name, stamp in files.items() if before.get(name) != stamp]
        for parent in sorted({self._remote(key, name).rsplit("/", 1)[0] for name in changed}):
            self.fs.makedirs(parent, exist_ok=True)
        if changed:
            self.fs.put([str(folder / name) for name in changed], [self._remote(key, name) for name in changed])
        self.fs.pipe_file(self._remote(key, MANIFEST), json.dumps({"files": files}).encode())
        for name in set(before) - set(files):  # e.g. checkpoints, removed once a run succeeded
            try:
                self.fs.rm_file(self._remote(key, name))
            except FileNotFoundError:
                pass
        return len(changed)

    def download(self, key: str, folder: Path) -> bool:
        """Bring the mirror of ``key`` to ``folder`` (which must not exist); False when there is none.

        The files arrive in a hidden folder renamed into place at the end, so a reader never sees
        half a folder, and two processes fetching at once both end with the whole one.

        Raises:
            ConfigError: the manifest names a file outside the folder (nothing is fetched).
        """
        files = self._manifest(key)
        if files is None:
            return False
        unsafe = _unsafe_names(files, folder)
        if unsafe:
            raise ConfigError(
                f"The mirror of {key} at {self.location} lists {len(unsafe)} file(s) outside its folder "
                f"(e.g. {unsafe[0]!r}); nothing of it was fetched. Its {MANIFEST} was not written by this "
                "app: delete that folder from the artifacts location, or upload it again from a good copy."
            )
        with new_folder(folder) as partial:  # another process's fetch that wins the race is kept
            for name in files:
                (partial / name).parent.mkdir(parents=True, exist_ok=True)
            if files:
                self.fs.get([self._remote(key, name) for name in files], [str(partial / name) for name in files])
            for name, (_, mtime_ns) in files.items():  # unchanged files are not sent again by upload
                os.utime(partial / name, ns=(mtime_ns, mtime_ns))
        return True

    def try_upload(self, folder: Path, key: str) -> bool:
        """:meth:`upload`, a failure logged rather than raised: the local folder is the working copy."""
        try:
            self.upload(folder, key)
        except Exception as err:  # noqa: BLE001 - fsspec back ends raise their own kinds
            log.warning("Could not copy %s to %s: %s: %s", folder, self._remote(key), err.__class__.__name__, err)
            return False
        return True

    def try_download(self, key: str, folder: Path) -> bool:
        """:meth:`download`, a failure logged and answered False: the caller reports the missing folder.

        A key found absent is not asked for again for :data:`MISSING_RECHECK_SECONDS`: pages that
        look for a missing run or dataset on every render do not query the bucket each time.
        """
        if time.monotonic() - self._missing.get(key, -MISSING_RECHECK_SECONDS) < MISSING_RECHECK_SECONDS:
            return False
        try:
            found = self.download(key, folder)
        except Exception as err:  # noqa: BLE001
            log.warning("Could not fetch %s from %s: %s: %s", folder.name, self._remote(key), err.__class__.__name__, err)
            found = False
        if found:
            self._missing.pop(key, None)
        else:
            self._missing[key] = time.monotonic()
        return found

    def list_keys(self, prefix: str) -> list[str]:
        """The names of the folders mirrored under ``prefix`` (e.g. ``datasets``), asked of the
        location at most once per :data:`MISSING_RECHECK_SECONDS`; ``[]`` when it cannot be read."""
        cached = self._listed.get(prefix)
        if cached is not None and time.monotonic() - cached[0] < MISSING_RECHECK_SECONDS:
            return cached[1]
        try:
            names = sorted(path.rstrip("/").rsplit("/", 1)[-1]
                           for path in self.fs.ls(self._remote(prefix), detail=False))
        except FileNotFoundError:
            names = []
        except Exception as err:  # noqa: BLE001
            log.warning("Could not list %s: %s: %s", self._remote(prefix), err.__class__.__name__, err)
            names = []
        self._listed[prefix] = (time.monotonic(), names)
        return names

    def read_file(self, key: str, relative: str) -> bytes | None:
        """One mirrored file's bytes; ``None`` when it is absent or cannot be read."""
        try:
            return self.fs.cat_file(self._remote(key, relative))
        except FileNotFoundError:
            return None
        except Exception as err:  # noqa: BLE001
            log.warning("Could not read %s: %s: %s", self._remote(key, relative), err.__class__.__name__, err)
            return None

    def delete(self, key: str) -> None:
        """Remove the mirror of ``key`` (nothing happens when there is none)."""
        try:
            self.fs.rm(self._remote(key), recursive=True)
        except FileNotFoundError:
            pass


def mirror_from_env(url: str | None = None) -> ArtifactMirror | None:
    """The mirror at ``url``, else at ``$TL_ARTIFACTS_URL``; ``None`` when neither is set."""
    url = url or os.environ.get(ARTIFACTS_ENV, "").strip()
    return ArtifactMirror(url) if url else None
