-- expect: fallback runtime: attempt to sort a read-only table
-- Tries: table.sort(offer.placements)
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "table_sort_input" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    table.sort(offer.placements)
  end
  return offer.margin
end

return policy
