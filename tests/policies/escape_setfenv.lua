-- expect: fallback runtime: attempt to call global 'setfenv'
-- Reaches for setfenv, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_setfenv" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    setfenv(1, {})
  end
  return offer.margin
end

return policy
