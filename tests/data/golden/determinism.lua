-- The golden test's probe (tests/cli/test_golden.py): a score built from
-- everything a policy can compute that could differ between two processes,
-- two machines or the two LuaJIT packages Debian ships (libluajit-5.1 and
-- OpenResty's libluajit2-5.1):
--   - the order pairs walks keys in (strings, numbers, booleans),
--   - tostring and string.format of tables and functions (addresses),
--   - math: libm's functions, x^y with whole and fractional exponents,
--     fmod, floor, the per-decision math.random,
--   - how numbers become text (tostring, %g, %.17g, %a) and text numbers.
-- Each value goes into the score through its text (%.17g shows every bit),
-- so the last bit of any of them changes the score: nbx prints scores in
-- fixed point (9 decimals), a hash of the text moves them by whole units.
-- For two offers the values are also logged in hex (%a; --explain prints
-- nbx.log lines), so a failing comparison names the function that differs.
-- The loops make the JIT compile this code part-way through a batch, so the
-- batch compares compiled code with interpreted code as well.
local P = { name = "golden_determinism" }

local keys = {}
for i = 1, 40 do keys["k" .. i] = i end
keys[2.5], keys[-7], keys[true], keys[false] = "x", "y", "t", "f"

-- a position-weighted hash of a string's bytes
local function mix(h, s)
  for j = 1, #s do h = (h * 31 + s:byte(j)) % 1000003 end
  return h
end

local function keys_of(t)
  local out = {}
  for k, v in pairs(t) do
    if type(v) ~= "table" then out[#out + 1] = tostring(k) .. "=" .. tostring(v) end
  end
  return table.concat(out, ",")
end

function P.score(offer, customer, session)
  local h = mix(0, keys_of(keys))
  h = mix(h, keys_of(offer))
  h = mix(h, keys_of(customer.attrs))
  h = mix(h, tostring({}) .. tostring(P.score) .. tostring(mix)
    .. string.format("%s|%s", {}, keys_of))
  local p = nbx.propensity(customer, offer)
  local x = p * 100 + offer.margin / 7
  local values = {
    "sin", math.sin(x), "cos", math.cos(x), "tan", math.tan(x), "asin", math.asin(p),
    "acos", math.acos(p), "atan", math.atan(x), "atan2", math.atan2(x, 3),
    "sinh", math.sinh(p), "cosh", math.cosh(p), "tanh", math.tanh(x / 10),
    "exp", math.exp(x / 10), "log", math.log(x + 1), "log10", math.log10(x + 2),
    "sqrt", math.sqrt(x + 1), "pow.5", (x + 1) ^ 0.5, "pow.37", (x + 1) ^ 0.37,
    "pow2", (x + 1) ^ 2, "pow3", (x + 1) ^ 3,
    "pow12", (x + 1) ^ 12, "pow-2.5", (x + 1) ^ -2.5, "2pow", 2 ^ (p * 10),
    "pow1/3", math.pow(x + 1, 1 / 3), "fmod", math.fmod(x * 1000, 7.3),
    "floor", math.floor(x * 1e6) / 1e6, "ceil", math.ceil(-x * 1e3), "deg", math.deg(x),
    "rad", math.rad(x), "ldexp", math.ldexp(p, 40), "frexp", (math.frexp(x + 1)),
    "modf", (math.modf(x * 3.7)), "max", math.max(p, x), "random", math.random(),
    "random1000", math.random(1000), "random-5,5", math.random(-5, 5),
    "ltv*churn", (customer.ltv or 0) * (customer.churn or 0), "ltv/3", (customer.ltv or 0) / 3,
  }
  -- every value's text into the score; for two offers, also into the log,
  -- a few values a line (a log line holds 240 bytes), to name what differs
  local logged = offer.id == "o004" or offer.id == "winback"
  local line = {}
  for j = 1, #values, 2 do
    local v = values[j + 1]
    local text = values[j] .. "=" .. string.format("%.17g", v)
    h = mix(h, text)
    if logged then
      line[#line + 1] = values[j] .. "=" .. string.format("%a", v)
      if #line == 6 or j + 1 == #values then
        nbx.log(offer.id, table.concat(line, " "))
        line = {}
      end
    end
  end
  h = mix(h, tostring(x / 3) .. string.format(" %g %.3f %5.1e %d", x, x, x, h))
  h = mix(h, tostring(tonumber("0x1p-3") + tonumber(" 1e-5 ") + tonumber("12.5")))
  local m = nbx.expected_margin(customer, offer)
  return h / 1000 + m, m
end

return P
