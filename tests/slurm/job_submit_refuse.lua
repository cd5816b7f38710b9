-- tests/test_slurm_cluster.py: refuses a job whose comment is "gridcredit-refuse", with a message for the
-- submitting user (slurm.log_user reaches sbatch's stderr); accepts every other job.
function slurm_job_submit(job_desc, part_list, submit_uid)
    if job_desc.comment == "gridcredit-refuse" then
        slurm.log_user("gridcredit: job refused for uid %d: cost 120 credits, available 20, shortfall 100",
                       submit_uid)
        return slurm.ESLURM_ACCOUNTING_POLICY
    end
    return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    return slurm.SUCCESS
end

return slurm.SUCCESS
