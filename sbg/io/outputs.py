"""Files sbg writes: whole or not at all, and a failure as one line naming the file.

Every file sbg writes for a user (``sbg detect``'s flags and quarantine,
summaries, reports, JSON figures, the alert log's CSV) goes through
:class:`AtomicFile`: the bytes go to a temporary file beside the target,
which is renamed onto the target in one step only once it is complete. A
full disk, a read-only file system or a killed process therefore never
leaves a truncated file under the real name, and never removes the file an
earlier run wrote there. Any ``OSError`` on the way becomes an
:class:`~sbg.errors.OutputError` naming the target and the system's reason
(``out.csv: cannot write: No space left on device``), which the CLI prints
on one line and exits with code 5.

>>> import pathlib, tempfile
>>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
>>> _ = write_text_atomic(p, "old")
>>> try:
...     with AtomicFile(p, "w") as fh:
...         _ = fh.write("half of a new")
...         raise ValueError("the run failed")
... except ValueError:
...     pass
>>> p.read_text(), [f.name for f in p.parent.iterdir()]
('old', ['a.txt'])
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from ..errors import OutputError

__all__ = ["AtomicFile", "write_text_atomic", "output_errors", "make_parent", "reason"]


def reason(exc: BaseException) -> str:
    """The system's words for an error, without its number and path.

    >>> reason(OSError(errno.ENOSPC, "No space left on device", "/x/out.csv"))
    'No space left on device'
    >>> reason(OSError("[Errno 27] File too large"))
    'File too large'
    """
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if text.startswith("[Errno ") and "] " in text:
        text = text.split("] ", 1)[1]
    return text


@contextlib.contextmanager
def output_errors(path, action: str = "cannot write"):
    """Turn an ``OSError`` raised inside the block into an :class:`OutputError` naming ``path``.

    A broken pipe is left alone: a reader that stops reading (``sbg detect -o - | head``) is
    not a failure of sbg.
    """
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(path, reason(exc), action) from exc


def make_parent(path, action: str = "cannot write"):
    """Create the directory of ``path`` and its parents; an :class:`OutputError` naming ``path`` if not.

    >>> import pathlib, tempfile
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "file"
    >>> _ = f.write_text("")
    >>> make_parent(f / "out.csv")
    Traceback (most recent call last):
    ...
    sbg.errors.OutputError: .../file/out.csv: cannot write: .../file is not a directory
    """
    parent = Path(path).parent
    with output_errors(path, action):
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file stands where a directory should be
            raise NotADirectoryError(errno.ENOTDIR, f"{parent} is not a directory") from None


class AtomicFile:
    """A file written under a temporary name beside ``path``, renamed onto ``path`` by :meth:`commit`.

    The directory of ``path`` is made if need be. Until the commit ``path`` keeps what it held (or stays absent);
    :meth:`discard`, or leaving a ``with`` block by an exception, removes the
    temporary file. Unlike :func:`tempfile.mkstemp` (mode 0600) the file is
    created with mode 0666 less the process umask, as ``open(path, "w")``
    would create it, so colleagues can read it on a shared drive when the
    umask lets them. Every ``OSError`` while opening, writing or committing
    is an :class:`OutputError` naming ``path``; the object is a writable
    file for ``csv.writer`` and pyarrow's writers.

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.csv"
    >>> with AtomicFile(p, "w", encoding="utf-8", newline="") as fh:
    ...     _ = fh.write("x,y\\n")
    ...     p.exists(), len(list(p.parent.iterdir()))
    (False, 1)
    >>> p.read_text(), [f.name for f in p.parent.iterdir()]
    ('x,y\\n', ['a.csv'])
    """

    def __init__(self, path, mode: str = "wb", encoding: str | None = None, newline: str | None = None):
        self.path = Path(path)
        self._errors = lambda: output_errors(self.path)
        make_parent(self.path)
        with self._errors():
            if self.path.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            for _ in range(100):
                self.tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
                try:
                    # The kernel applies the umask to 0o666: no umask() call, which would race other threads.
                    fd = os.open(self.tmp, flags, 0o666)
                    break
                except FileExistsError:
                    continue
            else:
                raise FileExistsError(errno.EEXIST, f"no free temporary name beside {self.path.name}")
            try:
                self._fh = os.fdopen(fd, mode, encoding=encoding, newline=newline)
            except BaseException:
                os.close(fd)
                self.tmp.unlink(missing_ok=True)
                raise

    def write(self, data):
        try:  # no context manager: csv.writer calls this once per row
            return self._fh.write(data)
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            raise OutputError(self.path, reason(exc)) from exc

    def flush(self):
        with self._errors():
            self._fh.flush()

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def commit(self):
        """Finish the file and rename it onto ``path``; on failure the temporary file is removed."""
        try:
            with self._errors():
                self._fh.close()
                os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self):
        """Remove the temporary file; ``path`` keeps what it held."""
        with contextlib.suppress(OSError):
            self._fh.close()  # its last flush may fail again (a full disk): the file goes anyway
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_text_atomic(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` with :class:`AtomicFile` and return the path.

    >>> import pathlib, tempfile
    >>> p = write_text_atomic(pathlib.Path(tempfile.mkdtemp()) / "a.txt", "hello")
    >>> p.read_text(), [f.name for f in p.parent.iterdir()]
    ('hello', ['a.txt'])
    """
    with AtomicFile(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)
