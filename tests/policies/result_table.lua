-- expect: fallback result: a table
-- A table.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "result_table" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return { 1 }
  end
  return offer.margin
end

return policy
