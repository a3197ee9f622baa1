# Guest script for the psample run: capability report, on-CPU and off-CPU profiles of the
# two workloads, then the folded outputs for the host to check.
step uname uname -r
step check /bin/psample check
step record /bin/psample record -F 499 -d 2 -o /tmp/out.folded -- /bin/workload 3 2 /tmp/workload.run
step offcpu /bin/psample offcpu -d 2 -o /tmp/off.folded -- /bin/sleep_workload
step record_all /bin/psample record -a -F 99 -d 1 -o /tmp/all.folded
step out.folded cat /tmp/out.folded
step off.folded cat /tmp/off.folded
step all.folded cat /tmp/all.folded
step workload.run cat /tmp/workload.run
