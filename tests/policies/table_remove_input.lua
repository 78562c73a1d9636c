-- expect: fallback runtime: attempt to modify a read-only table
-- Tries: table.remove(offer.placements)
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "table_remove_input" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    table.remove(offer.placements)
  end
  return offer.margin
end

return policy
