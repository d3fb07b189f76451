"""VMs people keep: create one from a built image, list, ssh, logs, stop, start, restart, rm, prune.

Owns the per-VM state under `$XDG_STATE_HOME/banger/vms/<name>/` (record, lock, disk, console
log, control socket), reconciling records with the processes that really run, the VM's
copy-on-write disk over the cached rootfs, and the managed `~/.ssh/config` block and
known_hosts that make `ssh NAME.vm` work from any terminal, starting a new VM from its image's
snapshot instead of booting it (restore.py), and the host user's coding-agent auth files copied
into a VM when it boots (auth.py).
May import: banger.app (to build an image from `image=REF` words), banger.steps (the boot
step's readiness and probe code), banger.engine, the domain packages and banger.core; never
banger.cli.
"""
