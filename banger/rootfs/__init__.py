"""The guest disk: e2fsprogs and debugfs helpers, the guest assets rendered from templates/
(network bootstrap, readiness agent, sshd drop-ins, units) and banger's managed SSH key.
May import: banger.core only (not the other domain packages).
"""
