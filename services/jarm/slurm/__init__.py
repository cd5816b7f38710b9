"""JARM's side of Slurm: the job_submit.lua template, its queue (queue.py) and its accounting."""
