-- expect: fallback timeout
-- Pattern timeouts caught by pcall still end the decision.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "timeout_plain_find_pcall" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    while true do
      pcall(string.match, ('a'):rep(3000), '.-.-.-.-b$')
    end
  end
  return offer.margin
end

return policy
