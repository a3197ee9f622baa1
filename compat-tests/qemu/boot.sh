#!/bin/bash
# Boot a kernel with an initramfs under TCG (no KVM needed) and copy the serial console to
# stdout. The guest's /init powers off when done; -no-reboot and panic=-1 turn a kernel
# panic into a prompt exit, and the timeout covers a hang.
#
# Why these options:
#   thread=single   one host thread runs every vCPU in turn. With multi-threaded TCG, a vCPU
#                   could run kernel text another vCPU was patching (static keys flipped
#                   through int3): 6.12 oopsed "int3" in __schedule when psample enabled its
#                   perf hooks, and in psi_task_switch during boot (2 guests in ~12 runs).
#                   Guests take as long as before (16-18 s each).
#   -cpu max,-cx16  with QEMU 7.2's multi-threaded TCG, Debian's 6.12 double-faults during
#                   boot at a cmpxchg16b in kmem_cache_alloc (seen on 5 of 6 parallel boots,
#                   with both qemu64 and max); without CX16 the guest kernel uses its
#                   non-cmpxchg16b path and boots every time.
#   no_timer_check  on a loaded host the emulated timer IRQ can miss the kernel's early
#                   IO-APIC check window, which panics with "IO-APIC + timer doesn't work".
#   -nic none       no NIC: skips the iPXE option ROM and the driver probe.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 VMLINUZ INITRAMFS [TIMEOUT]" >&2; exit 2; }
kernel=$1
initrd=$2
limit=${3:-180}
exec timeout --kill-after=5 "$limit" "${QEMU:-qemu-system-x86_64}" \
	-accel "${QEMU_ACCEL:-tcg,thread=single}" \
	-cpu "${QEMU_CPU:-max,-cx16}" \
	-m "${QEMU_MEM:-512M}" \
	-smp "${QEMU_SMP:-2}" \
	-nographic \
	-no-reboot \
	-nic none \
	-kernel "$kernel" \
	-initrd "$initrd" \
	-append 'console=ttyS0 panic=-1 quiet no_timer_check' \
	</dev/null
