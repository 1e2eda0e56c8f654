-- Argo CD health of an opsmgr AgentTask (install: argocd/README.md).
-- The operator's Ready condition on a task means "the run is over" (reason: the phase), so the phase decides
-- between Healthy (Succeeded) and Degraded (Failed, TimedOut, or a task that cannot run); a run still Pending or
-- Running is Progressing. Never Degraded before the operator has observed the current spec.

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

-- Why a finished run failed: the task was refused, or the command's exit code, or the operator's words.
local function failure(status, ready)
  local accepted = condition(status, "Accepted")
  if accepted ~= nil and accepted.status == "False" then
    return accepted.reason .. ": " .. (accepted.message or "")
  end
  if status.exitCode ~= nil then
    return (status.phase or ready.reason) .. ": exit code " .. status.exitCode
  end
  return (status.phase or ready.reason) .. ": " .. (ready.message or "")
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
  if status.phase == "Pending" or status.phase == "Running" then
    return "Progressing", "Task is " .. status.phase .. " on " .. target(obj.spec)
  end
  local ready = condition(status, "Ready")
  -- A Ready condition decided from an older spec says nothing about this one.
  if ready == nil or (ready.observedGeneration ~= nil and ready.observedGeneration < generation) then
    return "Progressing", "Waiting for the operator to decide the Ready condition"
  end
  if ready.status == "True" and status.phase == "Succeeded" then
    return "Healthy", "Succeeded" .. (status.exitCode ~= nil and (" with exit code " .. status.exitCode) or "")
  end
  if ready.status == "Unknown" or in_progress(ready.reason) then
    return "Progressing", ready.reason .. ": " .. (ready.message or "")
  end
  return "Degraded", failure(status, ready)
end

local hs = {}
hs.status, hs.message = assess(obj)
return hs
