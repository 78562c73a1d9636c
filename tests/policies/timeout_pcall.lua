-- expect: fallback timeout
-- Swallows the timeout with pcall and keeps looping.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "timeout_pcall" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    while true do
      pcall(function() while true do end end)
    end
  end
  return offer.margin
end

return policy
