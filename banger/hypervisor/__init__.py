"""Running a VM: choosing the backend (choice.py, with the KVM probe in kvm.py), the VM process
wrapper that owns cleanup (vm.py), QEMU and Firecracker (qemu.py, firecracker.py), QEMU's control
protocol (qmp.py: save a machine to a file, load one) and qcow2 overlays (qemu_img.py), and the
one place that maps a backend name to its class (backends.py).
May import: banger.core only (not the other domain packages).
"""
