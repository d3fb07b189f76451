"""OCI images: references, the registry client (HTTP, auth, resumable blob download; blob and manifest push: registry_push.py), local
layouts, manifests, layer reading and decoding, tar headers, applying a layer's changeset to a
rootfs tree, and the per-path metadata (fsmeta) an unprivileged extraction cannot write.
May import: banger.core only (not the other domain packages).
"""
