-- expect: fallback runtime: attempt to write field 'margin' of a read-only table
-- Tries: offer.margin = 1e9
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "write_offer" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    offer.margin = 1e9
  end
  return offer.margin
end

return policy
