-- expect: ok
-- The math functions and `^` are nbx's own (core/detmath.c): the same bits
-- on every machine, interpreted or compiled. A mismatch raises an error
-- naming it; passing, the policy scores offer.margin.
local policy = { name = "math_deterministic" }

local function check(what, got, want)
  if got ~= want then
    error(what .. ": expected " .. string.format("%a", want) .. ", got " .. string.format("%a", got))
  end
end

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    -- functions, not cdata: the FFI pointers stay inside the sandbox
    for _, name in ipairs({ "exp", "log", "log10", "pow", "sin", "cos", "tan", "asin", "acos",
                            "atan", "atan2", "sinh", "cosh", "tanh" }) do
      if type(math[name]) ~= "function" then error("math." .. name .. " is a " .. type(math[name])) end
    end
    -- `^`: right-associative, tighter than unary minus, strings convert
    check("2^10", 2 ^ 10, 1024)
    check("-2^2", -2 ^ 2, -4)
    check("2^3^2", 2 ^ 3 ^ 2, 512)
    check("(2^3)^2", (2 ^ 3) ^ 2, 64)
    check("2^-1", 2 ^ -1, 0.5)
    check("'3'^2", "3" ^ 2, 9)
    check("4^0.5", 4 ^ 0.5, 2)
    check("math.pow", math.pow(2, 0.5), math.sqrt(2))
    check("math.exp('1')", math.exp("1"), math.exp(1))
    check("math.exp(1)", math.exp(1), 2.7182818284590451)
    check("math.log(8, 2)", math.log(8, 2), 3)
    check("math.log(1000, 10)", math.log(1000, 10), 3)
    check("math.log10(1e-300)", math.log10(1e-300), -300)
    -- a loop the JIT compiles gives the bits detmath.c gives (tests/test_detmath.c)
    local s = 0
    for i = 1, 500 do
      local x = i / 100
      s = s + math.exp(-x) * math.sin(x * 7) + x ^ 1.5 - math.log(x) + math.atan2(x, 3) * math.tanh(x - 2)
    end
    check("the loop", s, 2119.9886522781658)
  end
  return offer.margin
end

return policy
