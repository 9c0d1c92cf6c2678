-- Argo CD health check for precinct.dev/BotPlugin (docs/kubernetes.md).
-- Reads the kstatus conditions the operator writes (docs/operator.md):
--   Suspended   spec.suspend, or Ready=False with reason Suspended (paused on purpose)
--   Degraded    suspended by the violation ladder (Stalled=True, reason Suspended):
--               a person must look at it and resume it
--   Progressing no status yet, a generation not yet observed, Reconciling=True,
--               or Ready=False while Starting
--   Degraded    Stalled=True, Ready=False for any other reason (OOMKilled,
--               CrashLoopBackOff, ExitCode<N>, conflicts, InvalidSpec, ...),
--               or a rolled-back update (Ready=True on the old revision but
--               LatestRevisionReady=False: the commit you synced is not running)
--   Healthy     Ready=True and the latest revision is the one running
local hs = {}

local function condition(conditions, type_)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == type_ then return c end
  end
  return nil
end

local function say(c, fallback)
  if c == nil then return fallback end
  local reason = c.reason or ""
  local message = c.message or ""
  if message ~= "" then return reason .. ": " .. message end
  if reason ~= "" then return reason end
  return fallback
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true: the plugin runs no Pod"
  return hs
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = (obj.metadata or {}).generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = status.conditions
local ready = condition(conditions, "Ready")
local stalled = condition(conditions, "Stalled")
local reconciling = condition(conditions, "Reconciling")
local latest = condition(conditions, "LatestRevisionReady")

if stalled ~= nil and stalled.status == "True" and stalled.reason == "Suspended" then
  hs.status = "Degraded"
  hs.message = say(stalled, "Suspended after repeated violations")
  return hs
end

if ready ~= nil and ready.status == "False" and ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = say(ready, "Suspended")
  return hs
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = say(stalled, "Stalled")
  return hs
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

if ready.status == "True" then
  if latest ~= nil and latest.status == "False" and latest.reason == "RolledBack" then
    hs.status = "Degraded"
    hs.message = "Rolled back to the last good revision: " .. say(latest, "RolledBack")
    return hs
  end
  if reconciling ~= nil and reconciling.status == "True" then
    hs.status = "Progressing"
    hs.message = say(reconciling, "Rolling out")
    return hs
  end
  hs.status = "Healthy"
  hs.message = say(ready, "Running")
  return hs
end

if ready.status == "False" and (ready.reason == "Starting" or ready.reason == nil) then
  hs.status = "Progressing"
  hs.message = say(ready, "Starting")
  return hs
end

if ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = say(ready, "Waiting")
  return hs
end

hs.status = "Degraded"
hs.message = say(ready, "Not ready")
return hs
