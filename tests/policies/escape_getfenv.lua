-- expect: fallback runtime: attempt to call global 'getfenv'
-- Reaches for getfenv, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_getfenv" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    getfenv(0).x = 1
  end
  return offer.margin
end

return policy
