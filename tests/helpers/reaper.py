"""Runs a process tree's root under a reaper, as a container runtime would.

    reaper.py COMMAND [ARG...]

Forks COMMAND in a session of its own (CRIU wants the root of a dump to
lead its session), prints its PID, and, being a child subreaper, reaps
every process of the tree as soon as it dies: a tree that CRIU killed after
a dump is gone at once, its PIDs free for the restore, whatever PID 1 does
(on some machines PID 1 reaps orphans a second or more late). Exits once
every process of the tree is reaped. COMMAND's stdout is /dev/null.
"""
import ctypes, os, sys

PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit(f"reaper: prctl: {os.strerror(ctypes.get_errno())}")
pid = os.fork()
if pid == 0:
    os.setsid()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execvp(sys.argv[1], sys.argv[1:])
print(pid, flush=True)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
