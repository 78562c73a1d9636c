-- expect: fallback timeout
-- An empty infinite loop.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "timeout_loop" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    while true do end
  end
  return offer.margin
end

return policy
