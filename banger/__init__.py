"""banger: OCI images -> bootable microVM disks -> disposable VMs."""
__version__ = "0.1.0"
