"""Student work at the end of a course: reading it on the hosts as the course user (hostside.py,
sent by wire.py), unpacking the untrusted stream on the controller (unpack.py), the collected
folders and the state they leave (store.py), and the commands collect, restore and the teardown
guard (collect.py, restore.py, guard.py)."""
