-- expect: fallback runtime: attempt to modify a read-only table
-- Tries: table.insert(offer.placements, 'everywhere')
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "table_insert_input" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    table.insert(offer.placements, 'everywhere')
  end
  return offer.margin
end

return policy
