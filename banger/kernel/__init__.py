"""Kernels: bundles under the state dir (bundle.py), importing them from a directory
(sources.py) or a Debian package fetched through the host's apt (apt.py, debian.py), the catalog
(catalog.py, catalog.json), vmlinux extraction, kernel modules (kmod.py) and the generated initramfs.
May import: banger.core only (not the other domain packages).
"""
