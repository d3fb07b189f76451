"""Bridge networking for VMs (root): one bridge, a tap per VM, persisted address leases from a
/24, outbound NAT with nftables, all removed when the last VM using them goes.
bridge.py is the API (attach, release_tap, detach, leases, cleanup, status); settings.py the pure
values (settings, Lease, tap names, MACs, allocation); store.py the lock and state files; host.py
the `ip`/`nft`/sysctl commands; dns.py the guest's nameserver and the doctor's DNS line;
vmdns.py NAME.vm through systemd-resolved, answered by names.py (a standalone stdlib-only responder).
May import: banger.core only (not the other domain packages).
"""
