-- expect: fallback timeout
-- An empty infinite loop.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "timeout_loop" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    while true do end
  end
  return offer.margin
end

return policy
