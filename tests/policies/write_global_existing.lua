-- expect: fallback runtime: assignment to global 'known'
-- Tries: known = 2
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
known = 1
local policy = { name = "write_global_existing" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    known = 2
  end
  return offer.margin
end

return policy
