"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(ValueError):
    """Bad input from the user: the message says what to fix."""


class TaskError(UserError):
    """A task file that cannot be used; the message names the row and field."""


class UnsupportedModelError(UserError):
    """A model whose architecture has no adapter."""


class Cancelled(Exception):
    """Raised by a Setup.on_batch callback to stop a run (the job was cancelled); not a user error."""


def check_output_path(path: str, flag: str = "--out", *, folder: bool = False, stdout: bool = False,
                      make_parents: bool = False) -> None:
    """Refuse, with one line, an output path that would replace or write into something that is not the
    user's regular file: a FIFO, a device node, a socket, a directory (or, with `folder`, a non-directory),
    a symlink to any of those, a read-only file; or one whose directory is missing (unless
    `make_parents` and the nearest existing ancestor is a writable directory) or not writable.
    `-` means standard output where the command can write there (`stdout`); else it is refused.
    Called before any work, so a bad path costs nothing. Torch-free (imports only os and stat)."""
    import os
    import stat

    if path == "-":
        if stdout:
            return
        raise UserError(f"{flag} '-' (standard output) is not supported here; give a file path")
    if not path:
        raise UserError(f"{flag} is empty; give a file path")
    kinds = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
             stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory", stat.S_IFREG: "a regular file"}
    if os.path.lexists(path):
        try:
            mode = os.stat(path).st_mode  # follows a symlink: what a write would reach
        except OSError:
            raise UserError(f"{flag} '{path}' is a broken symlink; remove it or choose another path") from None
        kind = kinds.get(stat.S_IFMT(mode), "not a regular file")
        via = " (through a symlink)" if os.path.islink(path) else ""
        if folder:
            if not stat.S_ISDIR(mode):
                raise UserError(f"{flag} '{path}' is {kind}{via}, not a directory; choose another path")
            if not os.access(path, os.W_OK | os.X_OK):
                raise UserError(f"{flag} '{path}' is a directory that is not writable; choose another path")
            return
        if stat.S_ISDIR(mode):
            raise UserError(f"{flag} '{path}' is a directory{via}; give a file path such as "
                            f"{os.path.join(path, 'out.json')}")
        if not stat.S_ISREG(mode):
            raise UserError(f"{flag} '{path}' is {kind}{via}, not a regular file; it is never written to or "
                            "replaced: choose a file path")
        if not os.access(path, os.W_OK) or not mode & 0o222:  # no write bit: read-only even for root
            raise UserError(f"{flag} '{path}' is a read-only file; it is not replaced: make it writable or "
                            "choose another path")
    parent = os.path.dirname(os.path.abspath(path))
    existing = parent
    while not os.path.isdir(existing):
        if os.path.lexists(existing):
            raise UserError(f"{flag}: '{existing}' is not a directory; choose another path")
        existing = os.path.dirname(existing)
    if existing != parent and not make_parents:
        raise UserError(f"{flag}: directory '{parent}' does not exist; create it first")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} '{path}' is not writable (directory '{existing}'); choose another path")


def check_input_file(path: str, what: str = "file") -> None:
    """An input file exists and is a regular file (a FIFO would block the reader, a directory cannot be
    read): one UserError naming it. Torch-free."""
    import os

    if not os.path.exists(path):
        raise UserError(f"{what} '{path}' not found")
    if not os.path.isfile(path):
        kind = "a directory" if os.path.isdir(path) else "not a regular file (a FIFO, device or socket)"
        raise UserError(f"{what} '{path}' is {kind}; give a file")


def output_target(path: str) -> str:
    """The file a write to `path` should replace: a symlink's (regular-file) target, so that an atomic
    rename updates the file the link points to instead of replacing the link."""
    import os

    return os.path.realpath(path) if os.path.islink(path) else path
