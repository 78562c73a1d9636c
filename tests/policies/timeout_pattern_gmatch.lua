-- expect: fallback timeout
-- The same explosion through gmatch.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "timeout_pattern_gmatch" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    for w in ('ab'):rep(2000):gmatch('a.-.-.-.-.-c') do return 1 end
  end
  return offer.margin
end

return policy
