-- wrk script for bench/nginx_wrk.sh: GET /decide for random customers.
-- Customer ids are those `nbx gen profiles` writes: c0000001 .. cN, zero
-- padded to at least 7 digits. NBX_BENCH_CUSTOMERS sets N.

local n = tonumber(os.getenv("NBX_BENCH_CUSTOMERS") or "1000000")
local width = math.max(7, #tostring(n))
local path = os.getenv("NBX_BENCH_PATH") or "/decide"
local fmt = path .. "?customer=c%0" .. width .. "d"

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end

function init(args)
  -- each wrk thread has its own Lua state: give each its own sequence
  math.randomseed(os.time() * 1000 + (seed or 0))
end

function request()
  return wrk.format("GET", string.format(fmt, math.random(1, n)))
end
