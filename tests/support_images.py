"""Session fixtures for the real Debian bookworm image (import them into conftest.py).

The image is debootstrapped once (root needed for that first build) and cached under
`fixture_cache`; later sessions reuse the cached OCI layout, which is rebuilt only when the
recipe (suite, package list, devimage.RECIPE_VERSION, architecture) changes.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from banger.devtools import debian_image as devimage, debootstrap
from tests.support_tools import need

DEBIAN_TAG = debootstrap.DEFAULT_SUITE  # the tag inside the layout and in the registry
DEBIAN_REPO = devimage.DEMO_REPO


def debian_layout_path(fixture_cache: Path) -> Path:
    return fixture_cache / "debian-oci"


@pytest.fixture(scope="session")
def debian_layout(fixture_cache: Path) -> Path:
    """OCI layout dir whose tag `bookworm` is a real Debian bookworm (systemd, udev, sshd) image."""
    layout = debian_layout_path(fixture_cache)
    source = fixture_cache / "debian-src"
    key = devimage.recipe_key(debootstrap.DEFAULT_SUITE, debootstrap.DEFAULT_INCLUDE, devimage._dpkg_arch())
    if not (source / f"debian-{debootstrap.DEFAULT_SUITE}-{key}.tar").exists() and not _layout_current(layout, key):
        need("debootstrap", "apt-get")
        if os.geteuid() != 0:
            pytest.skip("the Debian fixture image is not cached yet and debootstrap needs root: "
                        "run the tests once as root")
    devimage.build_debian_layout(layout, DEBIAN_TAG, source)
    return layout


def _layout_current(layout: Path, key: str) -> bool:
    stamp = layout / "banger-devimage.json"
    return stamp.exists() and f'"{key}"' in stamp.read_text()


@pytest.fixture(scope="session")
def debian_image_ref(debian_layout: Path, registry) -> str:
    """`127.0.0.1:PORT/debian:bookworm` in the session registry."""
    need("skopeo")
    return devimage.push(debian_layout, DEBIAN_TAG, registry.host, DEBIAN_REPO)
