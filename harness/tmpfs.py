"""A small disk of a test's own, to fill up: a tmpfs mounted on a folder.

Needs root. No pytest here."""
import os
import subprocess
from pathlib import Path


class Tmpfs:
    """``size``: in mount's terms ("4m"). ``mount()``, then ``unmount()``
    once nothing has a file open on it (a lazy unmount if something still
    does, so that no mount outlives the test)."""

    def __init__(self, path, size):
        self.path = Path(path)
        self.size = size
        self.mounted = False

    def mount(self):
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o",
                        "size={},mode=0777".format(self.size), "tmpfs", str(self.path)],
                       check=True, capture_output=True, timeout=30)
        self.mounted = True
        return self

    def unmount(self):
        if not self.mounted:
            return
        done = subprocess.run(["umount", str(self.path)], capture_output=True,
                              timeout=30)
        if done.returncode:
            subprocess.run(["umount", "-l", str(self.path)], check=True,
                           capture_output=True, timeout=30)
        self.mounted = False

    def free(self):
        """Bytes free."""
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self, name, size=None):
        """A file of ``size`` bytes (all the space left if None); returns
        its path and the bytes written."""
        path = self.path / name
        written = 0
        chunk = b"\0" * (64 << 10)
        with open(path, "wb", buffering=0) as handle:
            while size is None or written < size:
                part = chunk if size is None else chunk[:size - written]
                try:
                    written += handle.write(part)
                except OSError:  # ENOSPC: full
                    break
        return path, written
