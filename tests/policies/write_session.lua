-- expect: fallback runtime: attempt to write field 'placement'
-- Tries: session.placement = 'hero'
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "write_session" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    session.placement = 'hero'
  end
  return offer.margin
end

return policy
