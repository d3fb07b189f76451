"""The foundation: the content-addressed store and what every other package may use.

Owns: the CAS (blobs, trees, action records, locks, stat stamps: store.py), the action record
format and its checks (records.py), the builds-vs-gc lock (inflight.py), digests (digest.py),
RAM trees (ram_trees.py), named image records (images.py), build journals that `banger ui`
shows live (journal.py), file helpers (fsutil.py), telling a
full disk apart (diskspace.py), banger's directories and config (config.py), terminal progress
(progress.py) and the one-line BuildError.
May import: nothing of banger's (only the standard library and third-party packages).
"""
