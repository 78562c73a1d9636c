-- expect: fallback runtime: attempt to call global 'getfenv'
-- Reaches for getfenv, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_getfenv" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    getfenv(0).x = 1
  end
  return offer.margin
end

return policy
