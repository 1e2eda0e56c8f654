-- Argo CD health of an opsmgr Gateway (install: argocd/README.md).
-- Only the operator decides readiness; this script reads its verdict and never reports Degraded before the
-- operator has looked at the current spec, so a first sync or an edit waits instead of failing.

-- Reasons the operator gives while a gateway is still on its way to Ready (no pod accepts agents yet): a sync
-- waits for these instead of failing. Any `<Condition>Unknown` reason means "not decided yet" and waits too.
local IN_PROGRESS = {Starting = true}

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
    return "Progressing", "Being deleted: the operator is retiring the gateway pods"
  end
  if status == nil or status.observedGeneration == nil then
    return "Progressing", "Waiting for the opsmgr operator to reconcile the gateway"
  end
  if status.observedGeneration < generation then
    return "Progressing", "Waiting for the operator to observe generation " .. generation
      .. " (last observed " .. status.observedGeneration .. ")"
  end
  local ready = condition(status, "Ready")
  -- A Ready condition decided from an older spec says nothing about this one.
  if ready == nil or (ready.observedGeneration ~= nil and ready.observedGeneration < generation) then
    return "Progressing", "Waiting for the operator to decide the Ready condition"
  end
  if ready.status == "True" then
    return "Healthy", (status.readyReplicas or 0) .. "/" .. (status.replicas or 0) .. " gateway pods ready, "
      .. (status.agents or 0) .. " agents relayed"
  end
  if ready.status == "False" and not in_progress(ready.reason) then
    return "Degraded", ready.reason .. ": " .. (ready.message or "")
  end
  return "Progressing", ready.reason .. ": " .. (ready.message or "")
end

local hs = {}
hs.status, hs.message = assess(obj)
return hs
