-- expect: fallback timeout
-- Loops in eligible() rather than score().
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "timeout_in_eligible" }

function policy.eligible(offer, customer, session)
  if session.mode ~= "normal" then
    while true do end
  end
  return true
end

function policy.score(offer, customer, session)
  return offer.margin
end

return policy
