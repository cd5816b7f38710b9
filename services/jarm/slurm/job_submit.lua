--[[ JARM's admission hook for Slurm's job_submit/lua (gridcredit, services/jarm/agent.py).

Slurm runs slurm_job_submit serialized under slurmctld's locks with no timeout: every submission of
the cluster waits for it. So this hook never waits on the network: it asks JARM's local agent over
a Unix socket (LuaSocket's socket.unix: Debian's lua-socket, for the Lua 5.1 slurm-wlm links) with
a hard limit on the whole exchange (connect, send, answer: @TIMEOUT_MS@ ms in all; the connection is
kept for the next submission), and when the agent does not answer in time, or is down, the site's
policy applies:
  refuse        the job is refused, saying why
  admit_capped  at most @AGENT_DOWN_JOBS_MAX@ jobs per account are admitted until the agent answers again
An admitted job carries the agent's admission id in its AdminComment (jarm-admission=<id>), so the
hold path can tell the agent the job's hold exists ("settle").

Written by `gridcredit jarm agent-hook` from the [jarm] settings; do not edit the
copy in /etc/slurm, write it again.
]]

local SOCKET_PATH = "@SOCKET@"
local TIMEOUT_S = @TIMEOUT_MS@ / 1000
local POLICY = "@POLICY@"
local AGENT_DOWN_JOBS_MAX = @AGENT_DOWN_JOBS_MAX@
local DEFAULT_QOS = "normal"
local ANSWER_BYTES_MAX = 1024

local have_socket, socket = pcall(require, "socket")
local have_unix, unix = pcall(require, "socket.unix")
local admitted_while_down = {}     -- account -> jobs admitted by the policy since the agent last answered

local function name(value)
    -- the agent accepts names of A-Z a-z 0-9 _ . + - only: anything else becomes '?', which it refuses
    if value == nil then return "" end
    return (string.sub(tostring(value), 1, 64):gsub("[^%w_.+%-]", "?"))
end

local function count(value, default)
    if value == nil or value >= slurm.NO_VAL or value < 0 then return default end
    return math.floor(value)
end

local function gpus_of(tres)
    -- "gres:gpu:2", "gres/gpu:tesla:2", "gpu:1" (per node or per job, as given)
    if tres == nil then return 0 end
    local total = 0
    for item in string.gmatch(tres, "[^,]+") do
        if string.find(item, "gpu") then
            total = total + (tonumber(string.match(item, ":(%d+)$")) or 1)
        end
    end
    return total
end

local function time_limit_s(job_desc, part_list, partition)
    local minutes = job_desc.time_limit
    if minutes == nil or minutes >= slurm.NO_VAL then
        local part = part_list[partition]
        minutes = part and part.default_time
        if minutes == nil or minutes >= slurm.NO_VAL then minutes = part and part.max_time end
    end
    if minutes == nil or minutes >= slurm.NO_VAL then return 0 end   -- INFINITE: the agent refuses it
    return math.floor(minutes) * 60
end

local function default_partition(part_list)
    for part_name, part in pairs(part_list) do
        if part.flag_default == 1 then return part_name end
    end
    return ""
end

local function request_line(job_desc, part_list, submit_uid)
    local partition = job_desc.partition
    if partition == nil then partition = default_partition(part_list) end
    partition = string.match(partition, "^[^,]+") or partition      -- several partitions: priced by the first
    local cores = count(job_desc.min_cpus, 1)
    local nodes = count(job_desc.min_nodes, 1)
    local memory_mb = 0
    local per_cpu = count(job_desc.min_mem_per_cpu, nil)
    local per_node = count(job_desc.min_mem_per_node, nil)
    if per_cpu ~= nil then memory_mb = per_cpu * cores elseif per_node ~= nil then memory_mb = per_node * nodes end
    local gpus = gpus_of(job_desc.tres_per_job) + gpus_of(job_desc.tres_per_node) * nodes
    local account = job_desc.account or job_desc.default_account
    return string.format(
        "admit v1 user=%s uid=%d account=%s partition=%s qos=%s cores=%d nodes=%d time_limit_s=%d memory_mb=%d gpus=%d\n",
        name(job_desc.user_name), submit_uid, name(account), name(partition), name(job_desc.qos or DEFAULT_QOS),
        cores, nodes, time_limit_s(job_desc, part_list, partition), memory_mb, gpus), name(account)
end

local kept = nil   -- the connection to the agent, kept from one submission to the next (the agent allows many
                  -- requests on one; it closes one idle for a minute, and a new one is made then)

local function drop()
    if kept ~= nil then kept:close() end
    kept = nil
end

-- One exchange with the agent within TIMEOUT_S in all: the answer line, or nil and why not.
local function ask(line)
    if not (have_socket and have_unix) then return nil, "LuaSocket's socket.unix is not installed (lua-socket)" end
    local deadline = socket.gettime() + TIMEOUT_S
    local function left()
        local remaining = deadline - socket.gettime()
        if remaining <= 0 then return false end
        kept:settimeout(remaining, "b")    -- both LuaSocket timeouts: each wait, and the whole call
        kept:settimeout(remaining, "t")
        return true
    end
    if kept ~= nil then
        -- still open? Nothing may be waiting to be read: a closed or out-of-step connection is dropped
        kept:settimeout(0)
        local _, status = kept:receive(1)
        if status ~= "timeout" then drop() end
    end
    if kept == nil then
        kept = unix.stream()
        left()
        local ok, err = kept:connect(SOCKET_PATH)
        if not ok then drop() return nil, "connect: " .. tostring(err) end
    end
    if not left() then drop() return nil, "timeout" end
    local ok, err = kept:send(line)
    if not ok then drop() return nil, "send: " .. tostring(err) end
    if not left() then drop() return nil, "timeout" end
    local answer
    answer, err = kept:receive("*l")
    if answer == nil then drop() return nil, "answer: " .. tostring(err) end
    if #answer > ANSWER_BYTES_MAX then drop() return nil, "answer too long" end
    return answer, nil
end

local function policy(account, problem)
    slurm.log_error("jarm: the admission agent did not answer (%s); policy %s", problem, POLICY)
    if POLICY == "admit_capped" then
        local admitted = admitted_while_down[account] or 0
        if admitted < AGENT_DOWN_JOBS_MAX then
            admitted_while_down[account] = admitted + 1
            return slurm.SUCCESS
        end
        slurm.log_user("JARM: the site's admission agent does not answer, and account %s already has %d jobs "
                       .. "admitted without it (the most this site allows); try again in a few minutes",
                       account, admitted)
        return slurm.ESLURM_ACCOUNTING_POLICY
    end
    slurm.log_user("JARM: the site's admission agent does not answer, and this site refuses jobs without it; "
                   .. "try again in a few minutes")
    return slurm.ESLURM_ACCOUNTING_POLICY
end

function slurm_job_submit(job_desc, part_list, submit_uid)
    local started = have_socket and socket.gettime() or 0
    local line, account = request_line(job_desc, part_list, submit_uid)
    local answer, problem = ask(line)
    local elapsed_ms = have_socket and (socket.gettime() - started) * 1000 or 0
    if answer == nil then return policy(account, problem) end
    local verb, rest = string.match(answer, "^(%a+) ?(.*)$")
    if verb == "admit" then
        admitted_while_down = {}
        if job_desc.admin_comment == nil then job_desc.admin_comment = "jarm-admission=" .. rest end
        slurm.log_info("jarm: admit %s account=%s in %.3f ms", rest, account, elapsed_ms)
        return slurm.SUCCESS
    elseif verb == "refuse" then
        admitted_while_down = {}
        slurm.log_info("jarm: refuse account=%s in %.3f ms", account, elapsed_ms)
        slurm.log_user("%s", rest)
        return slurm.ESLURM_ACCOUNTING_POLICY
    end
    return policy(account, "agent: " .. tostring(answer))
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    return slurm.SUCCESS
end

return slurm.SUCCESS
