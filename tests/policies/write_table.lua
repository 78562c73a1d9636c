-- expect: fallback runtime: attempt to write field 'sort'
-- Tries: table.sort = nil
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "write_table" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    table.sort = nil
  end
  return offer.margin
end

return policy
