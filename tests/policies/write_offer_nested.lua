-- expect: fallback runtime: attempt to write field 'extra' of a read-only table
-- Tries to write into a nested table of the offer (its placements list).
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "write_offer_nested" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    offer.placements.extra = 1
  end
  return offer.margin
end

return policy
