-- expect: fallback runtime: assignment to global 'known'
-- Tries: known = 2
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
known = 1
local policy = { name = "write_global_existing" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    known = 2
  end
  return offer.margin
end

return policy
