-- expect: fallback runtime: assignment to global 'margin'
-- Tries: margin = 5
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "write_global" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    margin = 5
  end
  return offer.margin
end

return policy
