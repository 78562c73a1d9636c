-- expect: fallback runtime: attempt to call global 'rawset'
-- Reaches for rawset, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_rawset" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    rawset(offer, 'margin', 1e9)
  end
  return offer.margin
end

return policy
