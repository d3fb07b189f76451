"""The pipeline's steps, one module each, and their order (pipeline.py).

    fetch -> flatten -> ext4 -> ownership -> inject -> stage-kernel -> boot [-> snapshot]

Each module declares its doit task(s) with engine.tasks.step_task and its work function.
May import: banger.engine, the domain packages (oci, rootfs, kernel, hypervisor) and banger.core.
"""
