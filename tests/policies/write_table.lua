-- expect: fallback runtime: attempt to write field 'sort'
-- Tries: table.sort = nil
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "write_table" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    table.sort = nil
  end
  return offer.margin
end

return policy
