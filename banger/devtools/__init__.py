"""The embedded default and test helpers: a Debian image made with debootstrap and written as
an OCI layout (debian_image.py, oci_writer.py), and a local docker-registry (registry.py).
May import: banger.core only (not the other domain packages).
"""
