"""A course's images, a course-level feature above the engine: builder.py (the machine an image is
made from, refused when it ever belonged to a student, provisioned, verified and made ready) and
imageprep.py (the prepare script: per-machine files removed, homes rebuilt from /etc/skel plus the
course's own content). Used by `invoke bake` (fleet.course.imaging.bake) and the test hosts' baked layers
(fleet.testhosts.layers). The engine never imports this package."""
