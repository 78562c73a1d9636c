-- expect: fallback runtime: attempt to call global 'collectgarbage'
-- Reaches for collectgarbage, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_collectgarbage" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    collectgarbage('stop')
  end
  return offer.margin
end

return policy
