-- expect: fallback timeout
-- Tail calls never grow the stack: an endless loop by recursion.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "timeout_tail_call" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local function f(n) return f(n + 1) end
    return f(0)
  end
  return offer.margin
end

return policy
