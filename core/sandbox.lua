-- sandbox.lua: the engine's own Lua inside every policy's state.
--
-- Embedded into libnbx at build time (core/sandbox_lua.c is generated from
-- this file) and run once per state, before the policy, with its own
-- environment: a policy never sees this chunk's locals. It returns the
-- helpers policies call (nbx.*), the safe replacements of base and string
-- functions that must stay fast under the JIT (so they are Lua, not C: a
-- call into C ends a trace), and the driver that runs one decision's
-- candidates inside the VM.
--
-- This chunk is trusted: it is not rewritten by lsource.c, so it places
-- its own time checks (tick()) in its loops. Every loop here is bounded by
-- a table the policy built under the memory limit, and ticks.
--
-- N: what C hands in (sandbox_env.c, sb_build_state): native functions and
-- the limits.
local N = ...
local type, select, error = N.type, N.select, N.error
local native_tostring, native_tonumber = N.tostring, N.tonumber
local srep, sformat, sfind = N.rep, N.format, N.find
local check_sortable, order = N.check_sortable, N.order
local too_long, check_format, raise_len = N.too_long, N.check_format, N.raise_len
local STRING_MAX = N.string_max
local ssub, where = N.sub, N.where
-- nbx.log(): { on = C switched it on for this decision, n = lines, dropped }
local LOG, LOG_LINES, LOG_LINE_MAX = N.log, N.log_lines, N.log_line_max
-- proxy -> the table behind it, for every read-only table (inputs, the
-- catalog, libraries, and the policy's own tables once frozen): what #t and
-- the iteration functions see.
local DATA = N.data
-- The time check: TICKS[1] counts down; below zero, tick_check() looks at
-- the clock. It reads CLOCK_MONOTONIC through the FFI (compiled code calls
-- it directly, where a C function would end the trace) and, while C's next
-- look (DL[0], sandbox_limits.c's sb_publish_deadline) is still ahead,
-- grants the units the rest of the budget allows at their worst cost, as
-- C would; otherwise C decides (check: the CPU clock, the timeout).
local TICKS, check = N.ticks, N.check
local ffi = N.ffi
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } nbx_timespec;
int clock_gettime(int clock, nbx_timespec *ts);
]]
local C, TS, MONOTONIC = ffi.C, ffi.new("nbx_timespec"), N.clock_monotonic
local DL, UNIT_NS, TICK_MIN = N.deadline, N.unit_ns, N.tick_min
ffi = nil

local function tick_check()
  C.clock_gettime(MONOTONIC, TS)
  local now = native_tonumber(TS.tv_sec) * 1e9 + native_tonumber(TS.tv_nsec)
  if now < DL[0] then
    local units = (DL[1] - now) / UNIT_NS
    if units < TICK_MIN then units = TICK_MIN end
    local most = DL[2]
    if units > most then units = most end
    TICKS[1] = units
    return
  end
  return check()
end

local function tick()
  local n = TICKS[1] - 1
  TICKS[1] = n
  if n < 0 then tick_check() end
end

local state = { now = 0 }

-- ------------------------------------------------------------------------
-- What instrumented policy code calls (lsource.c rewrites #e and a .. b)
-- ------------------------------------------------------------------------

-- __index of every frozen table (sandbox_env.c, sb_freeze): its data.
local function frozen_index(t, k)
  return DATA[t][k]
end

-- #x. It counts as a tick: work done while a deep recursion unwinds (a
-- `return f(n - 1) .. s` in every frame) runs between no other ticks.
local function len(x)
  local n = TICKS[1] - 1
  TICKS[1] = n
  if n < 0 then tick_check() end
  local d = DATA[x]
  if d ~= nil then return #d end
  local t = type(x)
  if t == "string" or t == "table" then return #x end
  return raise_len(t)
end

-- a .. b with the result bounded: no string a policy holds is longer than
-- STRING_MAX, which bounds what any one operation on it costs. Errors
-- blame the policy's line (level 2), as the operator's would.
local function cat(a, b)
  local n = TICKS[1] - 1
  TICKS[1] = n
  if n < 0 then tick_check() end
  local ta, tb = type(a), type(b)
  if ta ~= "string" and ta ~= "number" then
    error("attempt to concatenate a " .. ta .. " value", 2)
  end
  if tb ~= "string" and tb ~= "number" then
    error("attempt to concatenate a " .. tb .. " value", 2)
  end
  local s = a .. b
  if #s > STRING_MAX then too_long("a concatenation", #s) end
  return s
end

-- ------------------------------------------------------------------------
-- math: nbx's own functions (detmath.c), the same bits on every machine,
-- where glibc's libm picks its code by CPU. C hands them in as FFI function
-- pointers (N.detmath), which compiled code calls directly; these wrappers
-- only convert arguments as the C library's math functions did.
-- ------------------------------------------------------------------------

local DM = N.detmath

-- A string argument that reads as a number counts as that number, as in
-- luaL_checknumber; anything else is the policy's error (level 3: the
-- caller of the wrapper).
local function arg_number(x, i, name)
  local n = type(x) == "string" and native_tonumber(x) or nil
  if n == nil then
    error("bad argument #" .. i .. " to '" .. name .. "' (number expected, got "
          .. type(x) .. ")", 3)
  end
  return n
end

local function unary(f, name)
  return function(x)
    if type(x) ~= "number" then x = arg_number(x, 1, name) end
    return f(x)
  end
end

local function binary(f, name)
  return function(x, y)
    if type(x) ~= "number" then x = arg_number(x, 1, name) end
    if type(y) ~= "number" then y = arg_number(y, 2, name) end
    return f(x, y)
  end
end

local DM_LOG, DM_LOG_BASE, DM_POW = DM.log, DM.log_base, DM.pow

-- math.log(x [, base]) as LuaJIT 2.1's.
local function log_math(x, base)
  if type(x) ~= "number" then x = arg_number(x, 1, "log") end
  if base == nil then return DM_LOG(x) end
  if type(base) ~= "number" then base = arg_number(base, 2, "log") end
  return DM_LOG_BASE(x, base)
end

local math_lib = { log = log_math, pow = binary(DM_POW, "pow"),
                   atan2 = binary(DM.atan2, "atan2") }
local unary_names = { "exp", "log10", "sin", "cos", "tan", "asin", "acos", "atan",
                      "sinh", "cosh", "tanh" }
for i = 1, #unary_names do
  local name = unary_names[i]
  math_lib[name] = unary(DM[name], name)
end

-- a ^ b (lsource.c rewrites it into __nbx_pow(a, b)): the operator's
-- conversions and error, nbx's pow.
local function arith_operand(x)
  local n = type(x) == "string" and native_tonumber(x) or nil
  if n == nil then error("attempt to perform arithmetic on a " .. type(x) .. " value", 3) end
  return n
end

local function pow_op(a, b)
  if type(a) ~= "number" then a = arith_operand(a) end
  if type(b) ~= "number" then b = arith_operand(b) end
  return DM_POW(a, b)
end

-- ------------------------------------------------------------------------
-- Iteration, in Lua so the JIT compiles loops over it (a call into C ends
-- a trace). They see through read-only proxies (the data is DATA[t]) and
-- never hand the data table out: the iterator's state is the proxy itself,
-- or a fresh cursor.
-- ------------------------------------------------------------------------

local function inext(t, i)
  i = i + 1
  local v = (DATA[t] or t)[i]
  if v ~= nil then return i, v end
end

local function ipairs(t)
  if type(t) ~= "table" then
    error("bad argument #1 to 'ipairs' (table expected, got " .. type(t) .. ")", 2)
  end
  return inext, t, 0
end

-- pairs walks the keys in a canonical order (numbers, then strings
-- bytewise, then false and true), not LuaJIT's hash order: string hashes
-- are seeded per state, so the order would differ between processes and a
-- decision would not be reproducible. The cursor is { table, its keys (a
-- copy), position }; keys whose value became nil are skipped, as next()
-- skips fields cleared during a traversal.
local function pairs_next(cursor)
  local t, keys, i = cursor[1], cursor[2], cursor[3]
  local d = DATA[t] or t
  while true do
    i = i + 1
    local k = keys[i]
    if k == nil then
      cursor[3] = i
      return nil
    end
    local v = d[k]
    if v ~= nil then
      cursor[3] = i
      return k, v
    end
  end
end

local function pairs(t)
  if type(t) ~= "table" then
    error("bad argument #1 to 'pairs' (table expected, got " .. type(t) .. ")", 2)
  end
  return pairs_next, { t, order(t), 0 }, nil
end

-- ------------------------------------------------------------------------
-- Replacements of base and string functions
-- ------------------------------------------------------------------------

-- tostring of a table or function is "table" or "function": the native one
-- shows an address, which differs between runs and would make decisions
-- irreproducible.
local function tostring(x)
  local t = type(x)
  if t == "table" or t == "function" or t == "userdata" or t == "thread" then return t end
  return native_tostring(x)
end

local function rep(s, n, sep)
  if type(n) == "number" and n >= 1 then
    local ls = type(s) == "number" and #native_tostring(s) or type(s) == "string" and #s or 0
    local lsep = type(sep) == "number" and #native_tostring(sep)
      or type(sep) == "string" and #sep or 0
    local total = ls * n + lsep * (n - 1)
    if total > STRING_MAX then too_long("string.rep", total) end
  end
  return srep(s, n, sep)
end

local function format_args(...)
  local n = select("#", ...)
  local args = { ... }
  for i = 1, n do
    local t = type(args[i])
    if t == "table" or t == "function" or t == "userdata" or t == "thread" then args[i] = t end
  end
  return args, n
end

local unpack_native = N.unpack
local function format(fmt, ...)
  -- %p prints an address; check_format refuses it (and only formats that
  -- contain a 'p' pay for the check).
  if type(fmt) == "string" and sfind(fmt, "p", 1, true) then check_format(fmt) end
  local s
  local n = select("#", ...)
  local plain = true
  for i = 1, n do
    local t = type((select(i, ...)))
    if t == "table" or t == "function" or t == "userdata" or t == "thread" then
      plain = false
      break
    end
  end
  if plain then
    s = sformat(fmt, ...)
  else
    local args, m = format_args(...)
    s = sformat(fmt, unpack_native(args, 1, m))
  end
  if #s > STRING_MAX then too_long("string.format", #s) end
  return s
end

-- Stable bottom-up merge sort in Lua: the native sort calls the comparator
-- from C, and a comparator that sorts again recurses through the C stack.
-- Here recursion stays on the Lua stack, which is bounded.
local RUN = 8
local function sort(t, lt)
  local n = check_sortable(t, lt)
  if n < 2 then return end
  for lo = 1, n, RUN do
    tick()
    local hi = lo + RUN - 1
    if hi > n then hi = n end
    for i = lo + 1, hi do
      local v, j = t[i], i - 1
      while j >= lo do
        local w = t[j]
        local before
        if lt then before = lt(v, w) else before = v < w end
        if not before then break end
        t[j + 1] = w
        j = j - 1
      end
      t[j + 1] = v
    end
  end
  local src, dst, width = t, {}, RUN
  while width < n do
    for lo = 1, n, 2 * width do
      tick()
      local mid, hi = lo + width - 1, lo + 2 * width - 1
      if mid > n then mid = n end
      if hi > n then hi = n end
      local i, j, k = lo, mid + 1, lo
      while i <= mid and j <= hi do
        local x, y = src[i], src[j]
        local right
        if lt then right = lt(y, x) else right = y < x end
        if right then dst[k] = y; j = j + 1 else dst[k] = x; i = i + 1 end
        k = k + 1
      end
      while i <= mid do dst[k] = src[i]; i = i + 1; k = k + 1 end
      while j <= hi do dst[k] = src[j]; j = j + 1; k = k + 1 end
    end
    src, dst = dst, src
    width = width * 2
  end
  if src ~= t then for i = 1, n do t[i] = src[i] end end
end

-- ------------------------------------------------------------------------
-- nbx.* helpers
-- ------------------------------------------------------------------------

-- Set by init() once the inputs exist: the live customer proxy, the offer
-- proxy -> offer index map, per offer index its unit margin and serving
-- cost, and PR: per offer index, the customer's propensity as caps.c
-- resolved it through propensity.c (the one definition of the fallback
-- chain), for every offer of the catalog (a shared array, see make_driver).
local customer, OFFER, PR, MARGIN, COST

local function init(t)
  customer, OFFER, PR = t.customer, t.offer_index, t.propensity
  MARGIN, COST = t.margin, t.cost
end

local function propensity(c, o)
  local i = OFFER[o]
  if i == nil or c ~= customer then
    error("nbx.propensity: pass the customer being decided and one of the catalog's offers", 2)
  end
  return PR[i]
end

-- The default policy's whole score: P(accept) * unit margin - serving cost.
local function expected_margin(c, o)
  local i = OFFER[o]
  if i == nil or c ~= customer then
    error("nbx.expected_margin: pass the customer being decided and one of the catalog's offers", 2)
  end
  return PR[i] * MARGIN[i] - COST[i]
end

-- As a whole score: (expected margin, expected margin). A policy whose
-- score is this very function is run natively by the sandbox (the same
-- arithmetic in C); called from Lua it is an ordinary helper.
local function expected_margin_score(o, c, s)
  local m = expected_margin(c, o)
  return m, m
end

local function clamp(x, lo, hi)
  if x < lo then return lo end
  if x > hi then return hi end
  return x
end

local function days_since(t, now)
  if t == nil then return nil end
  return ((now or state.now) - t) / 86400
end

-- nbx.log(...): a debug line for explanations, tests and checks, prefixed
-- with the policy's file and line; values are joined by spaces as print()
-- would. Only when C asked for it (an explained decision): otherwise it
-- returns at once, so leaving log lines in a policy costs a call. At most
-- LOG_LINES lines a decision, each cut to LOG_LINE_MAX bytes (C escapes
-- them); lines over the count are counted, not kept.
local function log(...)
  if not LOG.on then return end
  local n = LOG.n
  if n >= LOG_LINES then
    LOG.dropped = LOG.dropped + 1
    return
  end
  local line = where() .. ":"
  for i = 1, select("#", ...) do
    tick()
    local v = (select(i, ...))
    if type(v) ~= "string" then v = tostring(v) end
    if #v > LOG_LINE_MAX then v = ssub(v, 1, LOG_LINE_MAX) end
    line = line .. " " .. v
    if #line >= LOG_LINE_MAX then
      line = ssub(line, 1, LOG_LINE_MAX)
      break
    end
  end
  LOG.n = n + 1
  LOG[n + 1] = line
end

local function contains(list, value)
  if list == nil then return false end
  for _, v in ipairs(list) do
    tick()
    if v == value then return true end
  end
  return false
end

-- ------------------------------------------------------------------------
-- The driver
-- ------------------------------------------------------------------------

-- The per-decision loop, in two variants so a policy without eligible()
-- pays nothing for it; every bytecode here is paid for every candidate.
-- The loop needs no tick of its own: it runs at most once per candidate,
-- and every policy function ticks on entry.
--
-- C and the loop share arrays in C memory through FFI pointers (A: struct
-- sb_shared in sandbox_int.h), so no Lua API call is made per candidate:
-- C writes CO (offer index + 1, negated when the candidate has exposures),
-- CP (placement index + 1) and X (7 exposure numbers per exposed
-- candidate, times in seconds, 0 for never); the loop writes S (score), M
-- (expected margin) and F (what S and M hold: 1 score, 2 score and
-- margin, 3 ineligible, 4 a result that is not a number, whose values go
-- to BAD, and the loop stops). C checks the numbers as it reads them. The
-- customer's scalars come as arguments (cheaper than C setting fields by
-- name). ST[1] is the candidate being run, negated while in eligible(), so
-- a fault can name the offer and the function. eligible() may return false
-- and a reason; the reason goes to R.
local F_SCORED, F_SCORED_M, F_INELIGIBLE, F_BAD = 1, 2, 3, 4

local function make_driver(score, eligible, offers, places, customer, session,
                           cust, rfm, expo, sess, A, R, ST, BAD)
  local dirty = false
  local function prepare(now, id, anonymous, ltv, churn, r, f, m, segment, first, last,
                         orders, revenue, margin, recency)
    cust.id = id; cust.anonymous = anonymous; cust.ltv = ltv; cust.churn = churn
    rfm.r = r; rfm.f = f; rfm.m = m; rfm.segment = segment
    rfm.first_purchase = first; rfm.last_purchase = last; rfm.orders = orders
    rfm.revenue = revenue; rfm.margin = margin; rfm.recency_days = recency
    sess.now = now
    state.now = now
  end
  local function exposures(X, b)
    if b then
      expo.impressions = X[b + 1]; expo.clicks = X[b + 2]
      expo.accepts = X[b + 3]; expo.dismisses = X[b + 4]
      local t = X[b + 5]
      if t ~= 0 then expo.last_impression = t else expo.last_impression = nil end
      t = X[b + 6]
      if t ~= 0 then expo.last_dismiss = t else expo.last_dismiss = nil end
      t = X[b + 7]
      if t ~= 0 then expo.last_accept = t else expo.last_accept = nil end
      dirty = true
    else
      expo.impressions = 0; expo.clicks = 0; expo.accepts = 0; expo.dismisses = 0
      expo.last_impression = nil; expo.last_dismiss = nil; expo.last_accept = nil
      dirty = false
    end
  end
  -- Store candidate k's results; false when one is not a number.
  local function results(S, M, F, k, s, m)
    if type(s) ~= "number" then
      F[k] = F_BAD; BAD[1] = s; BAD[2] = m
      return false
    end
    S[k] = s
    if m == nil then
      F[k] = F_SCORED
    elseif type(m) == "number" then
      M[k] = m; F[k] = F_SCORED_M
    else
      F[k] = F_BAD; BAD[1] = s; BAD[2] = m
      return false
    end
    return true
  end
  if eligible == nil then
    return function(n, ...)
      prepare(...)
      local score, offers, places = score, offers, places
      local customer, session = customer, session
      local sess, ST = sess, ST
      local CO, CP, X, S, M, F = A.CO, A.CP, A.X, A.S, A.M, A.F
      local xj, lastp = 0, nil
      for k = 1, n do
        ST[1] = k
        local code, p = CO[k], CP[k]
        if code < 0 then
          code = -code
          exposures(X, xj)
          xj = xj + 7
        elseif dirty then
          exposures(X, nil)
        end
        if p ~= lastp then
          sess.placement = places[p]
          lastp = p
        end
        local s, m = score(offers[code], customer, session)
        if not results(S, M, F, k, s, m) then return end
      end
    end
  end
  return function(n, ...)
    prepare(...)
    local score, eligible, offers, places = score, eligible, offers, places
    local customer, session = customer, session
    local sess, R, ST = sess, R, ST
    local CO, CP, X, S, M, F = A.CO, A.CP, A.X, A.S, A.M, A.F
    local xj, lastp = 0, nil
    for k = 1, n do
      ST[1] = -k
      local code, p = CO[k], CP[k]
      if code < 0 then
        code = -code
        exposures(X, xj)
        xj = xj + 7
      elseif dirty then
        exposures(X, nil)
      end
      if p ~= lastp then
        sess.placement = places[p]
        lastp = p
      end
      local offer = offers[code]
      local ok, why = eligible(offer, customer, session)
      if ok then
        ST[1] = k
        local s, m = score(offer, customer, session)
        if not results(S, M, F, k, s, m) then return end
      else
        F[k] = F_INELIGIBLE
        R[k] = why
      end
    end
  end
end

return { sort = sort, propensity = propensity, expected_margin = expected_margin,
         expected_margin_score = expected_margin_score,
         clamp = clamp, days_since = days_since, contains = contains, log = log,
         tostring = tostring, rep = rep, format = format, len = len, cat = cat,
         frozen_index = frozen_index, pairs = pairs, ipairs = ipairs,
         make_driver = make_driver, init = init, tick_check = tick_check,
         math = math_lib, pow_op = pow_op }
