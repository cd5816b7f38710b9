#!/bin/sh
# tests/test_slurm_cluster.py's PrologSlurmctld and EpilogSlurmctld: records that it ran for a job (in the
# job's working directory, which the test makes writable for all, as <context>.<job id>) and, as the
# prolog, fails for a job whose comment asks it to.
out="$SLURM_JOB_WORK_DIR/$SLURM_SCRIPT_CONTEXT.$SLURM_JOB_ID"
{
    echo "uid=$(id -u)"
    echo "job=$SLURM_JOB_ID"
    echo "user=$SLURM_JOB_USER"
    echo "account=$SLURM_JOB_ACCOUNT"
    echo "partition=$SLURM_JOB_PARTITION"
    echo "restart=$SLURM_JOB_RESTART_COUNT"
    echo "exit=${SLURM_JOB_EXIT_CODE2:-}"
} >>"$out"
[ "$SLURM_SCRIPT_CONTEXT" = prolog_slurmctld ] && [ "$SLURM_JOB_COMMENT" = "gridcredit-prolog-fail" ] && exit 7
exit 0
