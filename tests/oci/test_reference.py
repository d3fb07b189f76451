"""Image references are parsed and normalized the way container runtimes do it."""
import os

import pytest

from banger.oci.reference import LayoutReference, Reference, ReferenceError, parse

DIGEST = "sha256:" + "ab" * 32

TABLE = [
    # text, registry, repository, tag, digest, default name
    ("debian", "registry-1.docker.io", "library/debian", "latest", None, "debian-latest"),
    ("debian:bookworm", "registry-1.docker.io", "library/debian", "bookworm", None, "debian-bookworm"),
    ("docker.io/debian:bookworm", "registry-1.docker.io", "library/debian", "bookworm", None, "debian-bookworm"),
    ("index.docker.io/library/debian", "registry-1.docker.io", "library/debian", "latest", None, "debian-latest"),
    ("bitnami/redis:7.2", "registry-1.docker.io", "bitnami/redis", "7.2", None, "redis-7.2"),
    ("127.0.0.1:5000/debian:bookworm", "127.0.0.1:5000", "debian", "bookworm", None, "debian-bookworm"),
    ("ghcr.io/org/team/app:v1.2_rc", "ghcr.io", "org/team/app", "v1.2_rc", None, "app-v1.2_rc"),
    ("localhost/app", "localhost", "app", "latest", None, "app-latest"),
    ("localhost:5000/a/b:Tag", "localhost:5000", "a/b", "Tag", None, "b-tag"),
    (f"debian@{DIGEST}", "registry-1.docker.io", "library/debian", None, DIGEST, "debian-abababababab"),
    (f"debian:bookworm@{DIGEST}", "registry-1.docker.io", "library/debian", "bookworm", DIGEST, "debian-bookworm"),
    (f"host.example:443/x/y:1@{DIGEST}", "host.example:443", "x/y", "1", DIGEST, "y-1"),
    ("[::1]:5000/img:t", "[::1]:5000", "img", "t", None, "img-t"),
    ("Registry.Example.COM/app", "registry.example.com", "app", "latest", None, "app-latest"),
    ("my_ns/sub-app__x:latest", "registry-1.docker.io", "my_ns/sub-app__x", "latest", None, "sub-app__x-latest"),
]


@pytest.mark.parametrize("text,registry,repository,tag,digest,name", TABLE)
def test_parse_table(text, registry, repository, tag, digest, name):
    ref = parse(text)
    assert isinstance(ref, Reference)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.default_name == name
    assert ref.reference == (digest or tag)


def test_normalized_string():
    assert str(parse("debian:bookworm")) == "registry-1.docker.io/library/debian:bookworm"
    assert str(parse(f"x/y:1@{DIGEST}")) == f"registry-1.docker.io/x/y:1@{DIGEST}"
    assert str(parse("127.0.0.1:5000/debian")) == "127.0.0.1:5000/debian:latest"


@pytest.mark.parametrize("text,fragment", [
    ("", "empty image reference"),
    ("Debian:bookworm", "must be lowercase"),
    ("debian:", "invalid tag"),
    ("debian:-x", "invalid tag"),
    ("debian:" + "t" * 129, "invalid tag"),
    ("debian@sha256:xyz", "invalid digest"),
    ("debian@md5:" + "a" * 32, "only lowercase sha256"),
    ("debian@sha256:" + "AB" * 32, "only lowercase sha256"),
    ("a//b", "invalid repository name"),
    ("a/../b", "invalid repository name"),
    ("host:5000/", "invalid repository name"),
    ("bad_host.com:5000/x", "invalid registry host"),
])
def test_parse_errors_are_one_line(text, fragment):
    with pytest.raises(ReferenceError) as exc:
        parse(text)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_oci_layout_refs(tmp_path):
    ref = parse(f"oci-layout:{tmp_path}/debian:bookworm")
    assert ref == LayoutReference(tmp_path / "debian", "bookworm")
    assert ref.default_name == "debian-bookworm"
    assert str(ref) == f"oci-layout:{tmp_path}/debian:bookworm"

    assert parse(f"oci-layout:{tmp_path}/out") == LayoutReference(tmp_path / "out", None)
    assert parse(f"oci-layout:{tmp_path}/out").default_name == "out"
    # skopeo's oci:DIR:NAME allows a full reference as the name; the image name comes from it
    named = parse(f"oci-layout:{tmp_path}/out:docker.io/library/debian:bookworm")
    assert named.tag == "docker.io/library/debian:bookworm"
    assert named.default_name == "debian-bookworm"
    pinned = parse(f"oci-layout:{tmp_path}/out@{DIGEST}")
    assert (pinned.tag, pinned.digest, pinned.default_name) == (None, DIGEST, "out-abababababab")


def test_oci_layout_relative_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ref = parse("oci-layout:img:v1")
    assert ref.path == tmp_path / "img" and os.path.isabs(ref.path)


@pytest.mark.parametrize("text", ["oci-layout:", "oci-layout::tag", "oci-layout:dir:"])
def test_oci_layout_errors(text):
    with pytest.raises(ReferenceError):
        parse(text)
