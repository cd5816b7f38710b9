--[[ JARM's admission hook for Slurm's job_submit/lua (gridcredit, services/jarm/agent.py).

Slurm runs slurm_job_submit serialized under slurmctld's locks with no timeout: every submission of
the cluster waits for it. So this hook never waits on the network, and most submissions wait on
nothing at all: the JARM's local agent gives this hook, over a Unix socket (LuaSocket's socket.unix:
Debian's lua-socket, for the Lua 5.1 slurm-wlm links), an **allowance** per account — the account's
funds at the Bank less what is admitted and not yet held, valid until the agent's reading of them
turns stale — and the price table's rates. A job whose estimate fits its account's allowance is
admitted here, without a round trip: the allowance shrinks, and the agent is told what was spent
("spent", written without waiting; it counts the job as its own admissions). Anything else — no
allowance yet, too small, expired, a partition the rates do not price, an absurd size — asks the
agent (first giving back what is left of the account's allowance, so that the agent decides from
all of the funds) with a hard limit on the whole exchange (connect, send, answer: @TIMEOUT_MS@ ms in
all); the agent's answer brings a new allowance. The connection is kept; when it closes, both sides
forget its allowances. When the agent does not answer in time, or is down, the site's policy applies:
  refuse        the job is refused, saying why
  admit_capped  at most @AGENT_DOWN_JOBS_MAX@ jobs per account are admitted until the agent answers again;
                they carry admission ids of the hook's own, and the agent is told of them ("admitted") before
                it is asked anything else, so that it counts them against their accounts' funds
After a time limit passed without an answer, the agent is not asked again for BACKOFF_S: a frozen
agent costs one wait, not one per submission.
An admitted job carries its admission id in its AdminComment (jarm-admission=<id>), by which the agent
finds it in Slurm's queue. Heterogeneous jobs (components separated by ':') are refused: JARM prices
one job of one partition.

Written by `gridcredit jarm agent-hook` from the [jarm] settings; do not edit the
copy in /etc/slurm, write it again.
]]

local SOCKET_PATH = "@SOCKET@"
local TIMEOUT_S = @TIMEOUT_MS@ / 1000
local POLICY = "@POLICY@"
local AGENT_DOWN_JOBS_MAX = @AGENT_DOWN_JOBS_MAX@
local DEFAULT_QOS = "normal"

local have_socket, socket = pcall(require, "socket")
math.randomseed(os.time())
local have_unix, unix = pcall(require, "socket.unix")
local admitted_while_down = {}     -- account -> jobs admitted by the policy since the agent last answered
local unasked = {}                 -- those jobs' "admitted v1 …" lines, sent before the next question
local BACKOFF_S = 1                -- no answer within the time limit: the policy applies at once for this long
local quiet_until = 0
local own_count = 0                -- the hook's own admission ids (while the agent does not answer)
local LINE_BYTES_MAX = 1024        -- a line from the agent
local LINES_MAX = 4096             -- lines read at once (a price table has at most 1024 rates)
local WHOLE_MAX = 2^53             -- doubles count whole numbers exactly below this

local kept = nil        -- the connection to the agent, kept from one submission to the next
local allowance = {}    -- account -> {credits, until_us}: what the agent gave this connection to spend
local rates = {}        -- "partition qos" -> {n = five numerators, d = denominator, exact}: the prices
local ids = nil         -- this connection's admission id prefix (24 hex digits) and its count
local id_count = 0
local partial = ""      -- a line from the agent read in part
local outbox = {}       -- lines for the agent, sent with the next one ("return v1 …")

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

-- The job as the agent reads it: its fields ("user=… gpus=…") and their values.
local function job_of(job_desc, part_list, submit_uid)
    local partition = job_desc.partition
    if partition == nil then partition = default_partition(part_list) end
    partition = string.match(partition, "^[^,]+") or partition      -- several partitions: priced by the first
    local job = {account = job_desc.account or job_desc.default_account, partition = partition,
                 qos = job_desc.qos or DEFAULT_QOS, cores = count(job_desc.min_cpus, 1),
                 nodes = count(job_desc.min_nodes, 1), memory_mb = 0}
    local per_cpu = count(job_desc.min_mem_per_cpu, nil)
    local per_node = count(job_desc.min_mem_per_node, nil)
    if per_cpu ~= nil then job.memory_mb = per_cpu * job.cores
    elseif per_node ~= nil then job.memory_mb = per_node * job.nodes end
    job.gpus = gpus_of(job_desc.tres_per_job) + gpus_of(job_desc.tres_per_node) * job.nodes
    job.time_limit_s = time_limit_s(job_desc, part_list, partition)
    job.plain = name(job.account) == tostring(job.account) and name(partition) == partition
                and name(job.qos) == job.qos and string.match(tostring(job.account), "^%w") ~= nil
    job.fields = string.format(
        "user=%s uid=%d account=%s partition=%s qos=%s cores=%.0f nodes=%.0f time_limit_s=%.0f memory_mb=%.0f "
        .. "gpus=%.0f",
        name(job_desc.user_name), submit_uid, name(job.account), name(partition), name(job.qos), job.cores,
        job.nodes, job.time_limit_s, job.memory_mb, job.gpus)
    job.account = name(job.account)
    return job
end

-- The job's cost at its rate (whole credits, rounded half up as the agent does), or nil when the rates do
-- not say or the job is outside the agent's limits (types.JobRequest: the agent decides those). Exact
-- when every number stays below 2^53; else an upper bound (the agent counts the exact cost).
local function estimate(job)
    local rate = rates[job.partition .. " " .. job.qos]
    local t, cores = job.time_limit_s, job.cores
    if rate == nil or not job.plain or t < 1 or t > 366 * 86400 or cores < 1 or cores > 1048576
       or job.nodes < 1 or job.nodes > 65536 or job.nodes > cores or job.memory_mb > 1073741824
       or job.gpus > 65536 then
        return nil
    end
    local quantities = {cores * t, cores * t * 1000, job.memory_mb * t, job.gpus * t, 1}
    local sum, exact = 0, rate.exact
    for index = 1, 5 do
        local term = quantities[index] * rate.n[index]
        if term >= WHOLE_MAX then exact = false end
        sum = sum + term
    end
    local d = rate.d
    if exact and 2 * sum + d < WHOLE_MAX then
        local numerator, denominator = 2 * sum + d, 2 * d        -- round half up: floor((2s + d) / 2d)
        local whole = math.floor(numerator / denominator)
        if whole * denominator > numerator then whole = whole - 1
        elseif (whole + 1) * denominator <= numerator then whole = whole + 1 end
        return whole
    end
    return math.ceil(sum / d * (1 + 1e-9))
end

local function forget()
    allowance, rates, ids, id_count, partial, outbox = {}, {}, nil, 0, "", {}
end

local function drop()
    if kept ~= nil then kept:close() end
    kept = nil
    forget()
end

local function values(line)
    local found = {}
    for key, value in string.gmatch(line, "([%w_]+)=(%S+)") do found[key] = value end
    return found
end

-- A line the agent sent of its own (an allowance, the rates, …): true when taken, false when it is not one.
local function take(line)
    local verb = string.match(line, "^(%a+) v1")
    local given = values(line)
    if verb == "allow" then
        local credits, until_us = tonumber(given.credits), tonumber(given.until_us)
        if given.account == nil or credits == nil or until_us == nil then return false end
        local held = allowance[given.account]
        allowance[given.account] = {credits = (held and held.credits or 0) + credits, until_us = until_us}
    elseif verb == "revoke" then
        local held = allowance[given.account]
        allowance[given.account] = nil
        table.insert(outbox, string.format("return v1 account=%s credits=%.0f\n", tostring(given.account),
                                           held and held.credits or 0))
    elseif verb == "prices" then
        rates = {}
    elseif verb == "rate" then
        local n, d = {}, given.denominator
        for number in string.gmatch(given.numerators or "", "%d+") do table.insert(n, number) end
        if #n ~= 5 or d == nil then return false end
        local exact = #d <= 15
        for index = 1, 5 do
            exact = exact and #n[index] <= 15
            n[index] = tonumber(n[index])
        end
        rates[tostring(given.partition) .. " " .. tostring(given.qos)] = {n = n, d = tonumber(d), exact = exact}
    elseif verb == "link" and given.ids ~= nil and string.match(given.ids, "^%x+$") and #given.ids == 24 then
        ids, id_count = given.ids, 0
    else
        return false
    end
    return true
end

-- Read what the agent sent since the last submission, without waiting.
local function drain()
    if kept == nil then return end
    kept:settimeout(0)
    for _ = 1, LINES_MAX do
        local line, err, part = kept:receive("*l", partial)
        if line ~= nil then
            partial = ""
            if #line > LINE_BYTES_MAX or not take(line) then drop() return end   -- out of step
        elseif err == "timeout" then
            partial = part or ""
            if #partial > LINE_BYTES_MAX then drop() end
            return
        else
            drop()                                                               -- closed
            return
        end
    end
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
    if kept == nil then
        kept = unix.stream()
        left()
        local ok, err = kept:connect(SOCKET_PATH)
        if not ok then drop() return nil, "connect: " .. tostring(err) end
    end
    if not left() then drop() return nil, "timeout" end
    local ok, err = kept:send(table.concat(outbox) .. line)
    outbox = {}
    if not ok then drop() return nil, "send: " .. tostring(err) end
    for _ = 1, LINES_MAX do
        if not left() then drop() return nil, "timeout" end
        local answer, part
        answer, err, part = kept:receive("*l", partial)
        if answer == nil then drop() return nil, "answer: " .. tostring(err) end
        partial = ""
        if #answer > LINE_BYTES_MAX then drop() return nil, "answer too long" end
        if not take(answer) then return answer, nil end
    end
    drop()
    return nil, "answer: too many lines"
end

-- Admit the job from its account's allowance, without waiting: its admission id, or nil.
local function spend(job)
    if kept == nil or ids == nil or id_count >= 4294967295 then return nil end
    local held = allowance[job.account]
    if held == nil or held.until_us <= socket.gettime() * 1000000 then return nil end
    local cost = estimate(job)
    if cost == nil or cost > held.credits then return nil end
    id_count = id_count + 1
    local admission_id = string.format("a-%s%08x", ids, id_count)
    local line = table.concat(outbox) .. string.format("spent v1 id=%s credits=%.0f %s\n", admission_id, cost,
                                                       job.fields)
    outbox = {}
    kept:settimeout(0)
    local sent = kept:send(line)
    if sent ~= #line then
        drop()          -- the agent gets no whole line: it counts nothing, and this connection's allowances end
        return nil
    end
    held.credits = held.credits - cost
    return admission_id
end

local function own_id()
    own_count = own_count + 1
    local now = have_socket and socket.gettime() or os.time()
    return string.format("a-%08x%08x%08x%08x", math.floor(now) % 4294967296, math.floor((now % 1) * 4294967295),
                         own_count % 4294967296, math.random(0, 2147483646))
end

local function policy(job_desc, job, problem)
    local account = job.account
    slurm.log_error("jarm: the admission agent did not answer (%s); policy %s", problem, POLICY)
    if POLICY == "admit_capped" then
        local admitted = admitted_while_down[account] or 0
        if admitted < AGENT_DOWN_JOBS_MAX then
            admitted_while_down[account] = admitted + 1
            local admission_id = own_id()
            if job_desc.admin_comment == nil then job_desc.admin_comment = "jarm-admission=" .. admission_id end
            table.insert(unasked, string.format("admitted v1 id=%s %s\n", admission_id, job.fields))
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
    if job_desc.het_job_offset ~= nil and job_desc.het_job_offset ~= slurm.NO_VAL then
        slurm.log_info("jarm: refuse a heterogeneous job (component %d)", job_desc.het_job_offset)
        slurm.log_user("JARM: heterogeneous jobs (components separated by ':' or #SBATCH hetjob) cannot be "
                       .. "priced at this site: submit each component as a job of its own (one may wait for "
                       .. "another with --dependency)")
        return slurm.ESLURM_ACCOUNTING_POLICY
    end
    local job = job_of(job_desc, part_list, submit_uid)
    drain()
    local admission_id = spend(job)
    if admission_id ~= nil then
        if job_desc.admin_comment == nil then job_desc.admin_comment = "jarm-admission=" .. admission_id end
        slurm.log_info("jarm: admit %s account=%s in %.3f ms (allowance)", admission_id, job.account,
                       (socket.gettime() - started) * 1000)
        return slurm.SUCCESS
    end
    local held = allowance[job.account]
    if held ~= nil then               -- what is left of it goes back first: the agent decides from all the funds
        table.insert(outbox, string.format("return v1 account=%s credits=%.0f\n", job.account, held.credits))
        allowance[job.account] = nil
    end
    if have_socket and socket.gettime() < quiet_until then
        return policy(job_desc, job, string.format("not asked: no answer in time less than %d s ago", BACKOFF_S))
    end
    local told = #unasked             -- the jobs admitted without the agent: it hears of them before the question
    local answer, problem = ask(table.concat(unasked) .. "admit v2 " .. job.fields .. "\n")
    local elapsed_ms = have_socket and (socket.gettime() - started) * 1000 or 0
    if answer == nil then
        if string.find(problem, "timeout", 1, true) then quiet_until = socket.gettime() + BACKOFF_S end
        return policy(job_desc, job, problem)
    end
    local verb, rest = string.match(answer, "^(%a+) ?(.*)$")
    if verb == "admit" or verb == "refuse" then
        -- the agent has read what was admitted without it (it answered a later line): its count starts again
        for _ = 1, told do table.remove(unasked, 1) end
        admitted_while_down = {}
    end
    if verb == "admit" then
        if job_desc.admin_comment == nil then job_desc.admin_comment = "jarm-admission=" .. rest end
        slurm.log_info("jarm: admit %s account=%s in %.3f ms (agent)", rest, job.account, elapsed_ms)
        return slurm.SUCCESS
    elseif verb == "refuse" then
        slurm.log_info("jarm: refuse account=%s in %.3f ms", job.account, elapsed_ms)
        slurm.log_user("%s", rest)
        return slurm.ESLURM_ACCOUNTING_POLICY
    end
    drop()
    return policy(job_desc, job, "agent: " .. tostring(answer))
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    return slurm.SUCCESS
end

return slurm.SUCCESS
