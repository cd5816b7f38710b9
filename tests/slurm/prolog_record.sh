#!/bin/sh
# tests/test_slurm_cluster.py's PrologSlurmctld: records that it ran for a job (in the job's working
# directory, which the test makes writable for all) and fails for a job whose comment asks it to.
out="$SLURM_JOB_WORK_DIR/prolog.$SLURM_JOB_ID"
{
    echo "uid=$(id -u)"
    echo "job=$SLURM_JOB_ID"
    echo "user=$SLURM_JOB_USER"
    echo "account=$SLURM_JOB_ACCOUNT"
    echo "partition=$SLURM_JOB_PARTITION"
    echo "restart=$SLURM_JOB_RESTART_COUNT"
} >>"$out"
[ "$SLURM_JOB_COMMENT" = "gridcredit-prolog-fail" ] && exit 7
exit 0
