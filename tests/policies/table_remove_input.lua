-- expect: fallback runtime: attempt to modify a read-only table
-- Tries: table.remove(offer.placements)
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "table_remove_input" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    table.remove(offer.placements)
  end
  return offer.margin
end

return policy
