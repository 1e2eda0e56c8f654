-- Argo CD health of an opsmgr ManagementPack (install: argocd/README.md).
-- Only opsmgr decides readiness; this script reads its verdict and never reports Degraded before the pack's
-- current spec was observed, so a first sync or an edit waits instead of failing.

-- A `<Condition>Unknown` reason means "not decided yet": a sync waits for it instead of failing.
local function in_progress(reason)
  return string.sub(reason or "", -7) == "Unknown"
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
    return "Progressing", "Being deleted: agents are unloading the pack"
  end
  if status == nil or status.observedGeneration == nil then
    return "Progressing", "Waiting for opsmgr to load the management pack"
  end
  if status.observedGeneration < generation then
    return "Progressing", "Waiting for opsmgr to observe generation " .. generation
      .. " (last observed " .. status.observedGeneration .. ")"
  end
  local ready = condition(status, "Ready")
  -- A Ready condition decided from an older spec says nothing about this one.
  if ready == nil or (ready.observedGeneration ~= nil and ready.observedGeneration < generation) then
    return "Progressing", "Waiting for opsmgr to decide the Ready condition"
  end
  if ready.status == "True" then
    return "Healthy", (status.rules or 0) .. " rules, " .. (status.monitors or 0) .. " monitors, "
      .. (status.tasks or 0) .. " tasks on " .. (status.agents or 0) .. " agents"
  end
  if ready.status == "False" and not in_progress(ready.reason) then
    return "Degraded", ready.reason .. ": " .. (ready.message or "")
  end
  return "Progressing", ready.reason .. ": " .. (ready.message or "")
end

local hs = {}
hs.status, hs.message = assess(obj)
return hs
