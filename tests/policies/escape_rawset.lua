-- expect: fallback runtime: attempt to call global 'rawset'
-- Reaches for rawset, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_rawset" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    rawset(offer, 'margin', 1e9)
  end
  return offer.margin
end

return policy
