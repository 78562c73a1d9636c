-- expect: fallback result: a table
-- A table.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "result_table" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    return { 1 }
  end
  return offer.margin
end

return policy
