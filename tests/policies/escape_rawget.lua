-- expect: fallback runtime: attempt to call global 'rawget'
-- Reaches for rawget, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_rawget" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return rawget(offer, 'margin')
  end
  return offer.margin
end

return policy
