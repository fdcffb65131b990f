"""Holds a given PID, as a process that took a dumped tree's PID would.

    pid_holder.py PID zombie|live

Makes a child with PID (writing PID-1 to /proc/sys/kernel/ns_last_pid
before each fork, as CRIU does, until the kernel hands PID out; then the
next PIDs handed out are where they were before, so that other processes
do not take PID's neighbours): `zombie`,
a child that exits at once and is not reaped (a killed process whose parent
has not waited yet); `live`, a child that sleeps (a PID reused by another
process). Prints "held" once it holds the PID, then waits for a line on
stdin (or its end): it frees the PID (kills and reaps the child), prints
"freed" and exits. Exits 1 when the PID could not be had.

The child never holds this process's stdin or stdout and dies with it: a
holder that fails is seen at once (its output ends) and leaves no process
on the PID.
"""
import ctypes, os, signal, sys, time

PR_SET_PDEATHSIG = 1
# The kernel hands out PIDs below pid_max and, past it, from 300 again
# (RESERVED_PIDS); ns_last_pid refuses a value of pid_max or more.
RESERVED_PIDS = 300

pid, mode = int(sys.argv[1]), sys.argv[2]
with open("/proc/sys/kernel/pid_max") as limit:
    pid_max = int(limit.read())
with open("/proc/sys/kernel/ns_last_pid") as last:
    before = int(last.read())
holder = os.getpid()
libc = ctypes.CDLL(None, use_errno=True)
child = 0
for attempt in range(20000):
    with open("/proc/sys/kernel/ns_last_pid", "w") as last:
        last.write(str(pid - 1))
    got = os.fork()
    if got == 0:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != holder:
            os._exit(0)
        if mode == "live":
            time.sleep(3600)
        os._exit(0)
    if got == pid:
        child = got
        break
    # Someone else's fork came first: give it back and try again.
    os.kill(got, signal.SIGKILL)
    os.waitpid(got, 0)
# The next forks, anyone's, go back where they were (past PID's
# neighbours): left at PID, they would take PID+1, PID+2..., the PIDs of a
# dumped tree's other processes, which its restore needs free. Near
# pid_max those neighbours are where the PIDs wrap to.
past = pid + 100
if past >= pid_max:
    past = RESERVED_PIDS + past - pid_max
else:
    past = max(before, past)
with open("/proc/sys/kernel/ns_last_pid", "w") as last:
    last.write(str(past))
if not child:
    sys.exit(f"pid_holder: PID {pid} could not be had")
if mode == "zombie":
    # Its exit is seen (it is a zombie now), and it stays one until reaped.
    os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)
print("held", flush=True)
sys.stdin.readline()
if mode == "live":
    os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
print("freed", flush=True)
