-- expect: fallback runtime: not eligible today
-- Raises in eligible() rather than score().
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "runtime_in_eligible" }

function policy.eligible(offer, customer, session)
  if session.mode == "hostile" then
    error("not eligible today")
  end
  return true
end

function policy.score(offer, customer, session)
  return offer.margin
end

return policy
