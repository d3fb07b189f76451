"""Bridge networking for VMs (root): one bridge, a tap per VM, persisted address leases from a
/24, outbound NAT with nftables, all removed when the last VM using them goes.
May import: banger.core only (not the other domain packages).
"""
