-- expect: fallback timeout
-- Loops in eligible() rather than score().
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "timeout_in_eligible" }

function policy.eligible(offer, customer, session)
  if session.mode == "hostile" then
    while true do end
  end
  return true
end

function policy.score(offer, customer, session)
  return offer.margin
end

return policy
