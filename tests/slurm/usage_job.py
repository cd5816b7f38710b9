#!/usr/bin/env python3
"""tests/test_slurm_cluster.py's measured batch job: touches MEMORY_MIB of memory, burns CPU_S seconds of CPU
time while holding it, then holds it HOLD_S seconds more (jobacct_gather/linux samples once a second).
    usage_job.py MEMORY_MIB CPU_S HOLD_S"""
import sys
import time

memory_mib, cpu_s, hold_s = (float(argument) for argument in sys.argv[1:4])
block = b"x" * int(memory_mib * 2**20)
while time.process_time() < cpu_s:
    pass
time.sleep(hold_s)
print(f"held {len(block)} bytes, used {time.process_time():.2f} s of CPU")
