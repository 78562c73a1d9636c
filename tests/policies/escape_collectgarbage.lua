-- expect: fallback runtime: attempt to call global 'collectgarbage'
-- Reaches for collectgarbage, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_collectgarbage" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    collectgarbage('stop')
  end
  return offer.margin
end

return policy
