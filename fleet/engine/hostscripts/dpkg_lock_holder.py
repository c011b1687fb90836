# Run on a host by __apt (apply-functions.sh) when apt-get failed while waiting for the dpkg lock:
# names the process that holds it. Sent on stdin to `python3 -I -`; imports nothing of ours.
import fcntl
import os
import struct


def main() -> None:
    for path in ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock"):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        lk = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0))
        kind, _, _, _, pid = struct.unpack("hhqqi", lk)
        if kind != fcntl.F_UNLCK:
            try:
                name = open(f"/proc/{pid}/comm").read().strip()
            except OSError:
                name = "?"
            print(f"dpkg lock {path} is held by process {pid} ({name})")


if __name__ == "__main__":
    main()
