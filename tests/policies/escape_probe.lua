-- expect: ok
-- Probes the environment at load time and in every call: any forbidden name
-- that is reachable, any write that succeeds, any shared state that leaks
-- between decisions raises "ESCAPED: ...". Passing means the probe found
-- nothing, and the policy scores offer.margin.
local forbidden = {
  "io", "os", "require", "package", "debug", "jit", "ffi", "bit", "load", "loadstring",
  "dofile", "loadfile", "getfenv", "setfenv", "newproxy", "collectgarbage", "gcinfo",
  "coroutine", "setmetatable", "getmetatable", "rawset", "rawget", "rawequal", "xpcall",
  "module", "print", "_G", "_VERSION", "arg",
}

local function probe(where, offer, customer, session)
  local env = { io = io, os = os, require = require, package = package, debug = debug,
    jit = jit, ffi = ffi, bit = bit, load = load, loadstring = loadstring, dofile = dofile,
    loadfile = loadfile, getfenv = getfenv, setfenv = setfenv, newproxy = newproxy,
    collectgarbage = collectgarbage, gcinfo = gcinfo, coroutine = coroutine,
    setmetatable = setmetatable, getmetatable = getmetatable, rawset = rawset,
    rawget = rawget, rawequal = rawequal, xpcall = xpcall, module = module, print = print,
    _G = _G, _VERSION = _VERSION, arg = arg }
  for _, name in ipairs(forbidden) do
    if env[name] ~= nil then error("ESCAPED: " .. name .. " is reachable " .. where) end
  end
  if string.dump ~= nil then error("ESCAPED: string.dump " .. where) end
  if ("").dump ~= nil then error("ESCAPED: string.dump through a string " .. where) end
  if math.randomseed ~= nil then error("ESCAPED: math.randomseed " .. where) end
  -- what the allow-list does provide
  for _, f in ipairs({ pairs, ipairs, next, type, tostring, tonumber, select, error, pcall,
                       assert, unpack, math.floor, math.random, string.format, string.find,
                       string.gsub, table.concat, table.insert, table.sort, nbx.len,
                       nbx.propensity }) do
    if type(f) ~= "function" then error("allow-listed function missing " .. where) end
  end
  -- libraries are read-only
  for _, lib in ipairs({ math, string, table, nbx }) do
    if pcall(function() lib.injected = true end) then error("ESCAPED: wrote a library " .. where) end
    if lib.injected ~= nil then error("ESCAPED: library write stuck " .. where) end
  end
  -- the strings' __index is the safe string table
  if ("x").rep ~= string.rep or ("x").find ~= string.find then
    error("ESCAPED: strings index something else " .. where)
  end
  if pcall(function() local s = "x"; s.find = 1 end) then error("ESCAPED: string field " .. where) end
  if offer then
    if pcall(function() offer.margin = 1e9 end) then error("ESCAPED: offer write " .. where) end
    if pcall(function() customer.rfm.r = 5 end) then error("ESCAPED: customer write " .. where) end
    if pcall(function() session.now = 0 end) then error("ESCAPED: session write " .. where) end
    if pcall(table.insert, offer.placements, "x") then error("ESCAPED: raw insert " .. where) end
    if pcall(function() probe_global = 1 end) then error("ESCAPED: global write " .. where) end
    if nbx.len(offer.placements) < 1 then error("proxy length broken " .. where) end
  end
end

probe("at load")
leak_check = "set at load"  -- allowed while loading, frozen afterwards

local policy = { name = "escape_probe" }

-- The full probe is heavy: run it for the first offer of a decision, and
-- the write checks on every offer. (No state may survive a decision, so
-- "the first" is known from the offer, not remembered.)
function policy.score(offer, customer, session)
  if offer.id == "bestsellers" or offer.id == "brand_banner" then
    probe("in score", offer, customer, session)
  elseif pcall(function() offer.margin = 1e9 end) or pcall(table.insert, offer.placements, 1) then
    error("ESCAPED: offer write in score")
  end
  if leak_check ~= "set at load" then error("ESCAPED: globals changed") end
  -- what the engine shares with its own Lua through the FFI never reaches
  -- the policy as cdata: counters, times and propensities are numbers
  for k, v in pairs(customer.exposures) do
    if type(v) ~= "number" then error("ESCAPED: exposures." .. k .. " is a " .. type(v)) end
  end
  if type(nbx.propensity(customer, offer)) ~= "number" then
    error("ESCAPED: a propensity that is not a number")
  end
  return offer.margin
end

return policy
