-- expect: fallback runtime: attempt to write to a read-only table
-- Tries: offer.placements[1] = 'x'
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "write_array_index" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    offer.placements[1] = 'x'
  end
  return offer.margin
end

return policy
