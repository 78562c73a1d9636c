-- expect: fallback runtime: stack overflow
-- Deep Lua recursion. Each level carries 200 values, so the Lua stack (not
-- the C stack) runs out after a few hundred levels, well within the time
-- limit.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "runtime_stack_overflow" }

local wide = {}
for i = 1, 200 do wide[i] = i end

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local function f(...) return 1 + f(...) end
    return f(unpack(wide))
  end
  return offer.margin
end

return policy
