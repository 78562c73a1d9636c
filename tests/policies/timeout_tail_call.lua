-- expect: fallback timeout
-- Tail calls never grow the stack: an endless loop by recursion.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "timeout_tail_call" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    local function f(n) return f(n + 1) end
    return f(0)
  end
  return offer.margin
end

return policy
