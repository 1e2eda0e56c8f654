-- Argo CD health of an opsmgr AgentTask (install: argocd/README.md).
-- A task that is still pending or running is Progressing; its verdict comes from the Ready condition once the
-- task is over, and never before the operator has observed the current spec, so a first sync waits.

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

-- One agent by name, or every agent a selector picks (one child AgentTask each).
local function target(spec)
  if spec.agent ~= nil then return "agent " .. spec.agent end
  return "the selected agents"
end

local function assess(obj)
  local generation = obj.metadata.generation or 0
  local status = obj.status
  if obj.metadata.deletionTimestamp ~= nil then
    return "Progressing", "Being deleted"
  end
  if status == nil or status.observedGeneration == nil then
    return "Progressing", "Waiting for the opsmgr operator to hand the task to " .. target(obj.spec)
  end
  if status.observedGeneration < generation then
    return "Progressing", "Waiting for the operator to observe generation " .. generation
      .. " (last observed " .. status.observedGeneration .. ")"
  end
  local ready = condition(status, "Ready")
  local current = ready ~= nil and (ready.observedGeneration or generation) >= generation
  if current and ready.status == "True" then
    return "Healthy", "Succeeded" .. (status.exitCode ~= nil and (" with exit code " .. status.exitCode) or "")
  end
  -- Ready is False while the command runs; that is not a failure yet.
  if status.phase == "Pending" or status.phase == "Running" then
    return "Progressing", "Task is " .. status.phase .. " on " .. target(obj.spec)
  end
  if not current then
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
