-- expect: fallback limit
-- Doubles a string until the memory or the time limit ends it (which comes
-- first depends on the machine: both are fine).
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "memory_concat" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local s = 'x'
    while true do s = s .. s end
  end
  return offer.margin
end

return policy
