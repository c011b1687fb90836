"""Put uv's binary in place from its wheel, which the controller sent (run on the host as root).

argv: the wheel folder, the version, the destination, then the sha256 hashes the course lock allows
for uv's wheels. The wheel whose hash the lock allows is opened and only its `uv` program is
written: to a temporary file beside the destination, made executable, then renamed over it, so a
run cut short leaves the old binary or the new one, never half of one. A wheel the lock does not
allow is refused (exit 3): nothing is written."""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import zipfile
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(folder: str, version: str, dest: str, *allowed: str) -> int:
    wheels = sorted(Path(folder).glob(f"uv-{version}-*.whl"))
    chosen = next((w for w in wheels if sha256(w) in allowed), None)
    if chosen is None:
        print(f"no uv {version} wheel in {folder} has a hash the course lock allows "
              f"({len(wheels)} found)", file=sys.stderr)
        return 3
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".uv-", dir=target.parent)
    try:
        with zipfile.ZipFile(chosen) as wheel, wheel.open(f"uv-{version}.data/scripts/uv") as source, \
                os.fdopen(fd, "wb") as out:
            while block := source.read(1 << 20):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
