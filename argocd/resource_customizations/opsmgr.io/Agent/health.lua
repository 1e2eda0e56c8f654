-- Argo CD health of an opsmgr Agent (install: argocd/README.md).
-- Only opsmgr decides readiness; this script reads its verdict and never reports Degraded before the agent's
-- current spec was observed, so a first sync or an edit waits instead of failing. An agent waiting for an
-- administrator's approval (approval policy Review) is Suspended: it needs a person, not a retry.
-- The computer's own monitor health is monitoring data, not deployment health: it shows in the message only.

-- Reasons the operator gives while an agent is still on its way to Ready (opsmgr.operator.readiness): a sync
-- waits for these instead of failing. Any `<Condition>Unknown` reason means "not decided yet" and waits too.
local IN_PROGRESS = {NoServers = true, Issuing = true}

local function in_progress(reason)
  return IN_PROGRESS[reason] == true or string.sub(reason or "", -7) == "Unknown"
end

local function condition(status, wanted)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == wanted then return c end
  end
  return nil
end

local function assess(obj)
  local generation = obj.metadata.generation or 0
  local status = obj.status
  if obj.metadata.deletionTimestamp ~= nil then
    return "Progressing", "Being deleted: the operator is revoking the agent's certificate"
  end
  if status == nil or status.observedGeneration == nil then
    return "Progressing", "Waiting for the opsmgr operator to reconcile the agent"
  end
  if status.observedGeneration < generation then
    return "Progressing", "Waiting for the operator to observe generation " .. generation
      .. " (last observed " .. status.observedGeneration .. ")"
  end
  local ready = condition(status, "Ready")
  if ready ~= nil and ready.status == "True" and (ready.observedGeneration or generation) >= generation then
    return "Healthy", "Connected to " .. (status.server or "?") .. ", health " .. (status.health or "Unknown")
      .. ", heartbeat " .. (status.heartbeat or "Unknown")
  end
  if status.approval == "Pending" then
    return "Suspended", "Waiting for an administrator to approve the agent: kubectl annotate agent "
      .. obj.metadata.name .. " opsmgr.io/approval=Approved"
  end
  -- A Ready condition decided from an older spec says nothing about this one.
  if ready == nil or (ready.observedGeneration ~= nil and ready.observedGeneration < generation) then
    return "Progressing", "Waiting for the operator to decide the Ready condition"
  end
  if ready.status == "False" and not in_progress(ready.reason) then
    return "Degraded", ready.reason .. ": " .. (ready.message or "")
  end
  return "Progressing", ready.reason .. ": " .. (ready.message or "")
end

local hs = {}
hs.status, hs.message = assess(obj)
return hs
