-- expect: fallback runtime: not eligible today
-- Raises in eligible() rather than score().
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "runtime_in_eligible" }

function policy.eligible(offer, customer, session)
  if session.mode ~= "normal" then
    error("not eligible today")
  end
  return true
end

function policy.score(offer, customer, session)
  return offer.margin
end

return policy
