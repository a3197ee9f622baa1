# Placeholder guest script: proves kernel boot, console and initramfs without psample.
step uname uname -r
step paranoid cat /proc/sys/kernel/perf_event_paranoid
step tracefs ls /sys/kernel/tracing/events/sched/sched_switch
step workload /bin/workload 0.5
step sleep_workload /bin/sleep_workload 0.5
step perf-dmesg sh -c "dmesg | grep -i -E \"perf|pmu\""
