-- expect: fallback runtime: attempt to modify a read-only table
-- Tries: table.insert(offer.placements, 'everywhere')
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "table_insert_input" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    table.insert(offer.placements, 'everywhere')
  end
  return offer.margin
end

return policy
