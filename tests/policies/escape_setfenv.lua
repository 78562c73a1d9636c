-- expect: fallback runtime: attempt to call global 'setfenv'
-- Reaches for setfenv, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_setfenv" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    setfenv(1, {})
  end
  return offer.margin
end

return policy
